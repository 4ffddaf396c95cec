"""Elementary-stream framing for remuxing packets without a source container.

Muxing packets into mp4 with PyAV 18.1's ``add_mux_stream`` (no codec context, no encoder) needs
the stream's parameter sets; that API cannot set ``codecpar.extradata``, but PyAV runs FFmpeg's
``extract_extradata`` bitstream filter on a stream's first packet when it is Annex B. So video is
normalised to **Annex B** with the parameter sets in front of the first packet, and AAC to
**ADTS** (FFmpeg's mp4 muxer then inserts ``aac_adtstoasc`` itself, which yields the
AudioSpecificConfig). Both were checked with PyAV 18.1 / FFmpeg 8.1 (tests/test_ring.py).

Formats (ISO/IEC 14496-15 for avcC/hvcC and length-prefixed NAL units; ISO/IEC 13818-7 / 14496-3
for ADTS and AudioSpecificConfig).
"""

from __future__ import annotations

START_CODE = b"\x00\x00\x00\x01"

#: ADTS sampling_frequency_index -> rate (ISO/IEC 14496-3, table 1.18).
ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025,
              8000, 7350)


class BitstreamError(ValueError):
    """Extradata or a packet is not in the framing it claims (truncated, wrong version)."""


def is_annexb(data: bytes) -> bool:
    """Whether ``data`` starts with an Annex B start code (``00 00 01`` or ``00 00 00 01``)."""
    return data[:3] == b"\x00\x00\x01" or data[:4] == START_CODE


def _u16(data: bytes, i: int) -> int:
    if i + 2 > len(data):
        raise BitstreamError("truncated parameter-set record")
    return (data[i] << 8) | data[i + 1]


def avcc_to_annexb(extradata: bytes) -> tuple[int, bytes]:
    """An ``avcC`` record -> (NAL length size in bytes, its SPS and PPS as Annex B).

    Raises:
        BitstreamError: not a version-1 avcC record, or truncated.
    """
    if len(extradata) < 7 or extradata[0] != 1:
        raise BitstreamError("not an avcC record")
    length_size = (extradata[4] & 3) + 1
    out = bytearray()
    i = 5
    for count_mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count (8 bits)
        if i >= len(extradata):
            raise BitstreamError("truncated avcC")
        count = extradata[i] & count_mask
        i += 1
        for _ in range(count):
            n = _u16(extradata, i)
            if i + 2 + n > len(extradata):
                raise BitstreamError("truncated avcC NAL unit")
            out += START_CODE + extradata[i + 2:i + 2 + n]
            i += 2 + n
    return length_size, bytes(out)


def hvcc_to_annexb(extradata: bytes) -> tuple[int, bytes]:
    """An ``hvcC`` record -> (NAL length size in bytes, its VPS/SPS/PPS/SEI as Annex B).

    Raises:
        BitstreamError: not a version-1 hvcC record, or truncated.
    """
    if len(extradata) < 23 or extradata[0] != 1:
        raise BitstreamError("not an hvcC record")
    length_size = (extradata[21] & 3) + 1
    arrays = extradata[22]
    out = bytearray()
    i = 23
    for _ in range(arrays):
        i += 1  # array_completeness, NAL unit type
        count = _u16(extradata, i)
        i += 2
        for _ in range(count):
            n = _u16(extradata, i)
            if i + 2 + n > len(extradata):
                raise BitstreamError("truncated hvcC NAL unit")
            out += START_CODE + extradata[i + 2:i + 2 + n]
            i += 2 + n
    return length_size, bytes(out)


def length_prefixed_to_annexb(data: bytes, length_size: int) -> bytes:
    """NAL units with ``length_size``-byte big-endian lengths -> Annex B.

    Raises:
        BitstreamError: a length runs past the end of the packet.
    """
    out = bytearray()
    i = 0
    while i < len(data):
        if i + length_size > len(data):
            raise BitstreamError("truncated NAL length")
        n = int.from_bytes(data[i:i + length_size], "big")
        i += length_size
        if i + n > len(data):
            raise BitstreamError("NAL unit runs past the end of the packet")
        out += START_CODE + data[i:i + n]
        i += n
    return bytes(out)


def video_parameter_sets(codec: str, extradata: bytes) -> tuple[int | None, bytes]:
    """(NAL length size of the packets or ``None`` when they are Annex B, the parameter sets as
    Annex B) for an H.264/HEVC stream's ``extradata``.

    Empty extradata: packets are taken to be Annex B with in-band parameter sets.

    Raises:
        BitstreamError: extradata in neither form.
    """
    if not extradata:
        return None, b""
    if is_annexb(extradata):
        return None, extradata
    if codec == "h264":
        return avcc_to_annexb(extradata)
    if codec == "hevc":
        return hvcc_to_annexb(extradata)
    raise BitstreamError(f"no Annex B conversion for {codec!r}")


def is_adts(data: bytes) -> bool:
    """Whether ``data`` starts with an ADTS syncword (12 bits set)."""
    return len(data) >= 7 and data[0] == 0xFF and (data[1] & 0xF0) == 0xF0


def adts_header(asc: bytes, payload_size: int) -> bytes:
    """The 7-byte ADTS header (no CRC) for one raw AAC frame of ``payload_size`` bytes, from the
    stream's AudioSpecificConfig.

    Raises:
        BitstreamError: the config cannot be carried by ADTS (object type outside 1..4, an
            explicit sampling rate, channel configuration 0) or the frame is too large.
    """
    if len(asc) < 2:
        raise BitstreamError("AudioSpecificConfig shorter than 2 bytes")
    object_type = asc[0] >> 3
    rate_index = ((asc[0] & 7) << 1) | (asc[1] >> 7)
    channels = (asc[1] >> 3) & 0xF
    if not 1 <= object_type <= 4 or rate_index >= len(ADTS_RATES) or not 1 <= channels <= 7:
        raise BitstreamError(f"AAC config not expressible in ADTS (object type {object_type}, "
                             f"rate index {rate_index}, channels {channels})")
    size = payload_size + 7
    if size >= 1 << 13:
        raise BitstreamError("AAC frame too large for ADTS")
    return bytes([
        0xFF, 0xF1,  # syncword, MPEG-4, layer 0, no CRC
        ((object_type - 1) << 6) | (rate_index << 2) | (channels >> 2),
        ((channels & 3) << 6) | (size >> 11),
        (size >> 3) & 0xFF,
        ((size & 7) << 5) | 0x1F,  # buffer fullness 0x7FF (VBR)
        0xFC,  # ... one raw data block
    ])
