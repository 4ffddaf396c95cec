"""`momentbus review OUT` over a real run's output: HTTP endpoints, bad input, live updates, and
the page in a real browser (Debian's headless Chromium driven by Playwright: the trigger is on
the timeline, its clip plays, its evidence is listed; screenshots are saved as test artifacts).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import momentbus_cmd, run_momentbus
from momentbus.traces.review import ReviewError, check_bind

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"  # Debian's `chromium` package (apt-get install -y chromium)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
URL_LINE = re.compile(r"momentbus review: serving .* at (http://\S+)")


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_out(sample, tmp_path_factory) -> Path:
    """One real `momentbus run` on the sample (one smile trigger and its clip), one process a
    kind (the lanes below count one face component)."""
    root = tmp_path_factory.mktemp("review-run")
    out = root / "out"
    proc = run_momentbus("run", str(sample("WolfgangLanger_Pexels.mp4")), "--out", str(out),
                         "--quiet", "--workers", "1", env={"TMPDIR": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "triggers.jsonl").read_text().strip(), "the sample fires a trigger"
    return out


@pytest.fixture
def copy_of(run_out, tmp_path):
    """``copy_of()`` -> a private copy of the run's OUT, free to damage."""
    def make(name: str = "copy") -> Path:
        dest = tmp_path / name
        shutil.copytree(run_out, dest)
        return dest
    return make


class Review:
    """A running `momentbus review` subprocess; ``url`` is the page (token included)."""

    def __init__(self, proc: subprocess.Popen, url: str, lines: list[str],
                 reader: threading.Thread) -> None:
        self.proc, self.url, self.lines, self.reader = proc, url, lines, reader

    def stderr_after_exit(self) -> str:
        """Everything it wrote on stderr (call once it exited: waits for the reader)."""
        self.reader.join(10)
        return "".join(self.lines)

    def at(self, path: str) -> str:
        base, _, query = self.url.partition("?")
        return base + path.lstrip("/") + (("&" if "?" in path else "?") + query if query else "")


@pytest.fixture
def review() -> Iterator:
    """``review(OUT, *args)`` starts `momentbus review OUT --bind 127.0.0.1:0 ...` and returns
    once it printed its URL (the readiness handshake); every one is stopped at teardown."""
    started: list[Review] = []

    def start(out: Path, *args: str, timeout_s: float = 60) -> Review:
        proc = subprocess.Popen(momentbus_cmd("review", str(out), "--bind", "127.0.0.1:0", *args),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        got: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:  # keeps reading so the pipe never fills
            for line in proc.stderr:
                lines.append(line)
                got.put(line)
            got.put(None)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = got.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                raise AssertionError(f"review printed no URL in {timeout_s} s: {lines}") from None
            if line is None:
                proc.wait(10)
                raise AssertionError(f"review exited ({proc.returncode}): {''.join(lines)}")
            m = URL_LINE.search(line)
            if m:
                r = Review(proc, m.group(1), lines, reader)
                started.append(r)
                return r

    yield start
    for r in started:
        r.proc.terminate()
        try:
            r.proc.wait(10)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait(10)
        assert "Traceback" not in r.stderr_after_exit(), r.stderr_after_exit()


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str) -> dict:
    status, _, body = get(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """Where screenshots go: $MOMENTBUS_TEST_ARTIFACTS, else a pytest temporary folder."""
    env = os.environ.get("MOMENTBUS_TEST_ARTIFACTS")
    folder = Path(env) if env else tmp_path_factory.mktemp("artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium, headless, with a fresh user-data dir (Playwright's own browser
    download is never used)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser):
    """A fresh tab that records every request's host and every console error."""
    tab = browser.new_page()
    tab.hosts, tab.errors = set(), []
    tab.on("request", lambda r: tab.hosts.add(r.url.split("/")[2]))
    tab.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))
    tab.on("pageerror", lambda e: tab.errors.append(str(e)))
    yield tab
    tab.close()


def wait_until_playing(page, until_s: float, timeout_ms: int = 30_000) -> list[float]:
    """Wait until the clip plays past ``until_s`` (clip time); returns [where the played range
    began, currentTime]. Resolved in the page on `timeupdate` events (no polling from here)."""
    return page.evaluate("""([until, timeout]) => new Promise((resolve, reject) => {
        const v = document.getElementById('player');
        const check = () => {
          if (!v.paused && v.currentTime >= until && v.played.length)
            resolve([v.played.start(0), v.currentTime]);
        };
        v.addEventListener('timeupdate', check);
        setTimeout(() => reject(new Error(
          `clip did not play: currentTime ${v.currentTime}, paused ${v.paused}, ` +
          `readyState ${v.readyState}, error ${v.error && v.error.code}`)), timeout);
        check();
      })""", [until_s, timeout_ms])


def triggers_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "triggers.jsonl").read_text().splitlines()]


# -- the page in a real browser ---------------------------------------------------------------


def test_the_trigger_is_on_the_timeline_and_its_clip_plays(run_out, review, page, artifacts):
    trig = triggers_of(run_out)[0]
    r = review(run_out)
    page.goto(r.url)
    page.wait_for_selector("body[data-ready='1']")
    marks = page.locator("#timeline .trig")
    assert marks.count() == len(triggers_of(run_out))
    mark = marks.first
    assert mark.locator("text").text_content() == trig["rule"]
    assert f"onset {trig['t_event_ns'] / 1e9:.2f} s" in mark.locator("title").text_content()
    # the lanes of every extractor and the sync delay are drawn from trace.jsonl
    lanes = page.locator("#lanes svg.lane")
    names = [lanes.nth(i).get_attribute("data-lane") for i in range(lanes.count())]
    assert {"daemon", "extractor:face#1", "extractor:quality#1"} <= set(names)
    assert "quality waits for face" in names

    # playback starts at the requested window start, not at the earlier keyframe, and plays
    meta = json.loads(next((run_out / "clips").glob("*.json")).read_text())
    start_in_clip = (meta["requested"]["t_start_ns"] - meta["actual"]["t_start_ns"]) / 1e9
    mark.click()
    began, now = wait_until_playing(page, start_in_clip + 1.0)
    assert began == pytest.approx(start_in_clip, abs=0.1) and now >= began + 1.0
    video = page.evaluate("""() => { const v = document.getElementById('player');
        return {src: v.currentSrc, width: v.videoWidth, duration: v.duration,
                error: v.error && v.error.code}; }""")
    assert video["error"] is None and video["width"] == 640 and video["duration"] > 5
    assert video["src"].endswith(".mp4")
    # the evidence, item by item, whatever its keys
    cards = page.locator("#evidence .ev")
    assert cards.count() == len(trig["evidence"])
    text = page.locator("#evidence").inner_text()
    assert "happy" in text and "baseline" in text and "seq 230" in text
    assert page.locator("#detail-title").inner_text().startswith(f"#1 {trig['rule']}")
    assert page.locator("#problems").is_hidden()
    page.locator("#detail-panel").scroll_into_view_if_needed()
    shot = artifacts / "review-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    # offline: nothing but this server was asked for anything
    assert page.hosts == {r.url.split("/")[2]}, page.hosts
    assert not page.errors, page.errors


def test_a_deleted_clip_is_named_on_the_page(copy_of, review, page, artifacts):
    out = copy_of()
    clip = next((out / "clips").glob("*.mp4"))
    clip.unlink()
    r = review(out)
    page.goto(r.url)
    page.wait_for_selector("body[data-ready='1']")
    problems = page.locator("#problems")
    assert problems.is_visible()
    assert f"clips/{clip.name} is missing on disk" in problems.inner_text()
    page.locator("#timeline .trig").first.click()
    message = page.locator("#clip-message")
    message.wait_for(state="visible")
    assert clip.name in message.inner_text()
    assert page.locator("#player").is_hidden()
    assert page.locator("#trigger-rows .tag.missing").count() == 1
    page.screenshot(path=str(artifacts / "review-page-missing-clip.png"), full_page=True)


def test_a_live_page_shows_a_trigger_appended_to_triggers_jsonl(copy_of, review, page):
    out = copy_of()
    lines = (out / "triggers.jsonl").read_text()
    (out / "triggers.jsonl").write_text("")
    r = review(out)
    page.goto(r.url)
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector("#live.on")  # the event stream is open
    assert page.locator("#timeline .trig").count() == 0
    with open(out / "triggers.jsonl", "a") as f:
        f.write(lines)
    page.wait_for_selector("#timeline .trig", timeout=15_000)
    assert page.locator("#trigger-rows tr").count() == 1


@pytest.fixture
def many_out(copy_of) -> Path:
    """The run's OUT with 3,000 triggers (evidence in the coming nested `values` shape), three
    dropped frames and two late observations added."""
    import random

    out = copy_of("many")
    base = triggers_of(out)[0]
    rng = random.Random(7)
    with open(out / "triggers.jsonl", "w") as f:
        for i in range(3000):
            t = rng.randrange(0, 19_600_000_000)
            f.write(json.dumps({**base, "rule": rng.choice(["smile", "wave", "hello"]),
                                "t_event_ns": t, "t_start_ns": max(0, t - 2_000_000_000),
                                "t_end_ns": t + 1_500_000_000, "score": rng.random(),
                                "missing": rng.choice([[], ["pose"]]),
                                "evidence": [{"kind": "face", "seq": i, "t_ns": t,
                                              "values": {"happy": 0.8, "track_id": 3}}]}) + "\n")
    with open(out / "trace.jsonl", "a") as f:
        for seq in (50, 51, 300):
            f.write(json.dumps({"record": "frame_drop", "component": "daemon", "group": "face",
                                "seqs": [seq], "reason": "latest"}) + "\n")
        for t in (3_200_000_000, 15_100_000_000):
            f.write(json.dumps({"record": "late_obs", "component": "fusion", "group": "quality",
                                "t_ns": t, "behind_ms": 40.0}) + "\n")
    return out


def test_thousands_of_triggers_are_paged(many_out, review, page, artifacts):
    r = review(many_out)
    first = get_json(r.at("api/triggers"))
    assert first["total"] == 3000 and len(first["items"]) == 50
    onsets = [t["t_event_ns"] for t in first["items"]]
    assert onsets == sorted(onsets), "event-time order"
    at = get_json(r.at("api/triggers?at_ns=10000000000"))
    assert at["offset"] % 50 == 0
    assert at["items"][0]["t_event_ns"] <= 10e9 <= at["items"][-1]["t_event_ns"]
    lanes = get_json(r.at("api/lanes?bins=200"))
    assert sum(lanes["triggers"]["count"]) == 3000
    assert lanes["drops"]["total"] == 3 and lanes["late"]["total"] == 2

    page.goto(r.url)
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#trigger-rows tr").count() == 50
    assert page.locator("#page-info").inner_text() == "1–50 of 3000"
    assert page.locator("#timeline .trig").count() == 50  # only this page's are drawn
    assert page.locator("#timeline .density rect").count() > 50  # every trigger, binned
    assert page.locator("#timeline line.drop").count() >= 2  # seqs 50/51 may share a bin
    assert page.locator("#timeline line.late").count() == 2
    page.click("#next")
    page.wait_for_selector("#page-info:has-text('51–100 of 3000')")
    page.locator("#trigger-rows tr").nth(3).click()
    page.wait_for_selector("#evidence .ev")
    assert "values.happy" in page.locator("#evidence").inner_text()  # nested evidence, generically
    page.click("#zoom-page")
    page.wait_for_selector("#zoom-info:has-text('–')")
    page.screenshot(path=str(artifacts / "review-page-3000-triggers.png"), full_page=True)
    assert not page.errors, page.errors


# -- HTTP: endpoints, clips with ranges, tokens ------------------------------------------------


def test_api_lists_the_trigger_with_its_clip_and_lanes(run_out, review):
    r = review(run_out)
    trig = triggers_of(run_out)[0]
    page = get_json(r.at("api/triggers"))
    assert page["total"] == 1 and page["items"][0]["rule"] == trig["rule"]
    item = page["items"][0]
    assert item["evidence"] == trig["evidence"] and item["clip"]["status"] == "ok"
    status = get_json(r.at("api/status"))
    assert status["state"] == "finished" and status["problems"] == []
    assert status["counts"]["frames_read"] == 472
    lanes = get_json(r.at("api/lanes?bins=100"))
    face = next(x for x in lanes["lanes"] if x["name"] == "extractor:face#1")
    assert sum(face["count"]) == face["points"] == 197 and len(face["mean"]) == 100
    assert lanes["triggers"]["total"] == 1


def test_clips_are_served_with_range_requests(run_out, review):
    r = review(run_out)
    name = get_json(r.at("api/triggers"))["items"][0]["clip"]["name"]
    size = (run_out / "clips" / name).stat().st_size
    status, headers, body = get(r.at(f"clips/{name}"), {"Range": "bytes=100-199"})
    assert status == 206 and len(body) == 100
    assert headers["content-range"] == f"bytes 100-199/{size}"
    assert body == (run_out / "clips" / name).read_bytes()[100:200]
    assert get(r.at("clips/..%2Ftriggers.jsonl"))[0] == 404
    assert get(r.at("clips/nothing.mp4"))[0] == 404


def test_the_page_and_its_assets_are_ours_only(run_out, review):
    r = review(run_out)
    status, headers, body = get(r.url)
    assert status == 200 and "default-src 'self'" in headers["content-security-policy"]
    html = body.decode()
    assert "http://" not in html and "https://" not in html, "no CDN, no external asset"
    for asset in ("static/review.js", "static/review.css"):
        status, _, text = get(r.at(asset))
        assert status == 200 and b"https://" not in text and b"@import" not in text


def test_with_a_token_every_request_needs_it(run_out, review):
    r = review(run_out, "--token", "s3cret")
    assert r.url.endswith("?token=s3cret")
    base = r.url.split("?")[0]
    assert get(base)[0] == 401
    assert get(base + "api/status")[0] == 401
    assert get(base + "api/status", {"Authorization": "Bearer s3cret"})[0] == 200
    assert get(base + "api/status?token=wrong")[0] == 401
    assert get(r.at("api/status"))[0] == 200
    status, _, body = get(r.url)
    assert status == 200 and b'data-token="s3cret"' in body  # the page keeps it
    name = get_json(r.at("api/triggers"))["items"][0]["clip"]["name"]
    assert get(r.at(f"clips/{name}"), {"Range": "bytes=0-9"})[0] == 206


def test_sse_announces_new_triggers_and_clips(copy_of, review):
    out = copy_of()
    trigger_lines = (out / "triggers.jsonl").read_text()
    (out / "triggers.jsonl").write_text("")
    clips = out / "clips"
    stash = out.parent / "stash"
    shutil.move(clips, stash)
    # the trace as it was before the trigger fired: no clip record, no clip summary yet
    records = (out / "trace.jsonl").read_text().splitlines()
    first_trigger = next(i for i, line in enumerate(records) if '"record":"trigger"' in line)
    (out / "trace.jsonl").write_text("\n".join(records[:first_trigger]) + "\n")
    r = review(out)
    with urllib.request.urlopen(r.at("api/events"), timeout=15) as stream:
        def next_update() -> dict:
            event = None
            while True:
                line = stream.readline().decode().strip()  # bounded by the socket timeout
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "update":
                    return json.loads(line.split(":", 1)[1])

        assert next_update()["triggers"] == 0
        with open(out / "triggers.jsonl", "a") as f:
            f.write(trigger_lines)
        assert next_update()["triggers"] == 1
        item = get_json(r.at("api/triggers"))["items"][0]
        assert item["clip"]["status"] == "pending"
        shutil.move(stash, clips)
        while next_update()["clips"] < 1:
            pass
    assert get_json(r.at("api/triggers"))["items"][0]["clip"]["status"] == "ok"


def test_ctrl_c_with_an_open_event_stream_stops_cleanly(run_out, review):
    r = review(run_out)
    with urllib.request.urlopen(r.at("api/events"), timeout=15) as stream:
        assert stream.readline().startswith(b"retry:")
        r.proc.send_signal(signal.SIGINT)
        assert r.proc.wait(15) == 130
    err = r.stderr_after_exit()
    assert "Traceback" not in err and "ERROR" not in err, err


# -- bad input ---------------------------------------------------------------------------------


def test_a_missing_out_still_renders_and_says_so(tmp_path, review):
    r = review(tmp_path / "never-written")
    status, _, body = get(r.url)
    assert status == 200 and b"momentbus" in body
    st = get_json(r.at("api/status"))
    assert st["state"] == "empty"
    assert any("never-written does not exist" in p for p in st["problems"])
    assert get_json(r.at("api/triggers"))["total"] == 0
    assert get_json(r.at("api/lanes"))["lanes"] == []


def test_an_empty_out_still_renders_and_says_so(tmp_path, review):
    (tmp_path / "empty").mkdir()
    r = review(tmp_path / "empty")
    assert get(r.url)[0] == 200
    problems = get_json(r.at("api/status"))["problems"]
    assert any("is empty" in p and "triggers.jsonl" in p for p in problems), problems


def test_a_torn_trace_line_is_reported_and_the_rest_shown(copy_of, review):
    out = copy_of()
    with open(out / "trace.jsonl", "a") as f:
        f.write('{"record":"timing","wall_ns":17952519')  # a run cut short mid-line
    with open(out / "triggers.jsonl", "a") as f:
        f.write("not json\n")
    r = review(out)
    st = get_json(r.at("api/status"))
    assert any(p.startswith("trace.jsonl: the last line is incomplete") for p in st["problems"])
    assert "triggers.jsonl: 1 malformed line(s) skipped" in st["problems"]
    assert st["counts"]["frames_read"] == 472
    assert get_json(r.at("api/triggers"))["total"] == 1
    assert any(x["name"] == "extractor:face#1" for x in get_json(r.at("api/lanes"))["lanes"])


def test_missing_trace_and_triggers_files_are_named(copy_of, review):
    out = copy_of()
    (out / "trace.jsonl").unlink()
    r = review(out)
    problems = get_json(r.at("api/status"))["problems"]
    assert any(p.startswith("trace.jsonl is missing") for p in problems), problems
    assert get_json(r.at("api/triggers"))["total"] == 1
    out2 = copy_of("copy2")
    (out2 / "triggers.jsonl").unlink()
    r2 = review(out2)
    problems = get_json(r2.at("api/status"))["problems"]
    # the trace's trigger records stand in for the missing file
    assert "triggers.jsonl is missing: showing the 1 trigger(s) found in trace.jsonl" in problems
    assert get_json(r2.at("api/triggers"))["items"][0]["clip"]["status"] == "ok"


def test_non_loopback_bind_without_token_is_one_line_exit_2(run_out):
    proc = run_momentbus("review", str(run_out), "--bind", "0.0.0.0:0", timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("momentbus: error: review: binding 0.0.0.0")
    assert "--token" in lines[0] and "--insecure" in lines[0]


def test_the_non_loopback_rule():
    check_bind("127.0.0.1", None, False)
    check_bind("0.0.0.0", "t", False)
    check_bind("10.1.2.3", None, True)
    with pytest.raises(ReviewError):
        check_bind("::", None, False)
    with pytest.raises(ReviewError):
        check_bind("127.0.0.1", "", False)


def test_a_port_in_use_is_one_line_exit_2(run_out):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = run_momentbus("review", str(run_out), "--bind", f"127.0.0.1:{port}", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"momentbus: error: review: 127.0.0.1:{port}: cannot bind "
                                   "(Address already in use)")
