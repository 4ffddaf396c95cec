#!/usr/bin/python3
"""A second decoder for ring clips: the frames (and audio samples) GStreamer presents from an mp4.

    /usr/bin/python3 tests/gst_clip_check.py CLIP.mp4

qtdemux (GStreamer's own mp4 demuxer, not FFmpeg's) turns the edit list into its segment,
openh264dec (Cisco OpenH264) and faad decode, the decoder base classes clip to the segment.
Prints one JSON line: presented video frames, first/last frame stream time, the first frame's
md5 (I420 bytes), audio samples. Needs the apt packages of live_servers.APT_COMMAND plus
gstreamer1.0-plugins-bad's openh264 element (present on Debian 12) and faad (plugins-bad).
Not a test dependency: tests/LIVE_NOTES.md records what it printed.
"""
import hashlib
import json
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

Gst.init(None)


def pull(path, branch):
    pipe = Gst.parse_launch(f'filesrc location="{path}" ! qtdemux ! {branch} ! '
                            'appsink name=s sync=false max-buffers=0')
    sink = pipe.get_by_name("s")
    pipe.set_state(Gst.State.PLAYING)
    out = []
    while True:
        s = sink.emit("try-pull-sample", 5 * Gst.SECOND)
        if s is None:
            break
        seg = s.get_segment()
        buf = s.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        digest = hashlib.md5(bytes(info.data)).hexdigest() if not out else None
        buf.unmap(info)
        out.append((seg.to_stream_time(Gst.Format.TIME, buf.pts), buf.get_size(), digest))
    err = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    return out, (err.parse_error()[0].message if err else None)


path = sys.argv[1]
video, verr = pull(path, "h264parse ! openh264dec")
audio, aerr = pull(path, "aacparse ! faad ! audio/x-raw,format=S16LE,channels=2")
print(json.dumps({"file": path, "video_frames": len(video),
                  "first_frame_stream_time_s": video[0][0] / 1e9 if video else None,
                  "last_frame_stream_time_s": video[-1][0] / 1e9 if video else None,
                  "first_frame_md5": video[0][2] if video else None,
                  "audio_samples": sum(n for _, n, _ in audio) // 4,
                  "errors": [e for e in (verr, aerr) if e]}))
