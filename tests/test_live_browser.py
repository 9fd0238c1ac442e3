"""The page in a real browser: Debian's Chromium, headless, driven by Playwright, with a speech
file as its microphone, in a 1280x720 window. It opens the address the server prints (with its
token, which the page then keeps out of its address), starts a live session, and the page itself
shows that lip-synced video plays at the avatar's rate, that its mouth moves with the speech,
that the whole video is inside the window, and what the server is doing beside it."""
import asyncio
import re
import shutil

import cv2
import numpy as np
import pytest

from conftest import FACE_MODEL, MEDIA, ffmpeg, require
from lipsync_jax import infer
from lipsync_jax.live import avatar as avatars
from test_live_server import _get, running, setup  # noqa: F401 (setup: the module fixture)

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')

# Samples the video's lower face 10 times a second: its mean absolute difference from the
# first sample (the avatar idle) and from the sample before; with the frames the element
# presented and the seconds that took, both by the page's own clock.
PROBE = '''async (seconds) => {
  const video = document.getElementById('video');
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const context = canvas.getContext('2d', {willReadFrequently: true});
  const lower = () => {
    context.drawImage(video, 0, 0);
    const h = canvas.height;
    return context.getImageData(0, Math.floor(h * 0.58), canvas.width, Math.floor(h * 0.3)).data;
  };
  const firstFrame = window.framesShown, began = performance.now();
  const first = lower(), fromIdle = [], fromBefore = [];
  let before = first;
  const distance = (a, b) => {
    let sum = 0;
    for (let k = 0; k < a.length; k += 4) sum += Math.abs(a[k] - b[k]);
    return sum / (a.length / 4);
  };
  for (let i = 0; i < seconds * 10; i++) {
    await new Promise((r) => setTimeout(r, 100));
    const now = lower();
    fromIdle.push(distance(now, first));
    fromBefore.push(distance(now, before));
    before = now;
  }
  return {fromIdle, fromBefore, width: video.videoWidth, frames: window.framesShown - firstFrame,
          seconds: (performance.now() - began) / 1000};
}'''


# Where the video's picture is drawn (object-fit: contain), in the window's pixels.
SHOWN = '''() => {
  const video = document.getElementById('video');
  const box = video.getBoundingClientRect();
  const scale = Math.min(box.width / video.videoWidth, box.height / video.videoHeight);
  const width = video.videoWidth * scale, height = video.videoHeight * scale;
  return {picture: [box.left + (box.width - width) / 2, box.top + (box.height - height) / 2,
                    width, height], element: [box.left, box.top, box.width, box.height]};
}'''

# The panel's speaking / idle, read every 100 ms for `seconds`.
SPEAKING = '''async (seconds) => {
  const seen = [];
  for (let i = 0; i < seconds * 10; i++) {
    seen.push(document.getElementById('speech').textContent);
    await new Promise((r) => setTimeout(r, 100));
  }
  return seen;
}'''


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_page_lip_syncs_the_microphone_in_chromium(setup, tmp_path):  # noqa: F811
  playwright = pytest.importorskip('playwright.sync_api')
  # a photo avatar: its idle frames do not move, so what moves is the lip-sync
  photo = tmp_path / 'photo.png'
  ffmpeg('-i', require(MEDIA / 'face_photo.png'), '-vf', 'scale=256:256', photo)
  still = avatars.prepare(str(photo), options=infer.Options(face_model=str(require(FACE_MODEL))))
  avatars.save(still, str(tmp_path / 'avatars' / 'still'))
  setup = dict(setup, avatars=str(tmp_path / 'avatars'))
  speech = tmp_path / 'speech.wav'  # Chromium's fake microphone loops it: 2 s of speech, 2 of
  ffmpeg('-i', require(MEDIA / 'speech_en_16k_stereo.wav'), '-af', 'atrim=0:2,apad=pad_dur=2',
         '-ac', '1', '-ar', '48000', '-c:a', 'pcm_s16le', speech)  # silence
  with running(setup, token='s3cret') as (url, server):
    with playwright.sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
          '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
          f'--use-file-for-fake-audio-capture={speech}',
          '--autoplay-policy=no-user-gesture-required', '--no-sandbox'])
      try:
        page = browser.new_page(viewport={'width': 1280, 'height': 720})
        errors = []
        page.on('pageerror', lambda e: errors.append(str(e)))
        page.goto(url + '/?token=s3cret')
        assert page.url == url + '/'  # the token went into a cookie, out of the address
        page.wait_for_function("document.getElementById('avatar').options.length > 0")
        page.click('#talk')
        page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=30000)
        probe = page.evaluate(PROBE, 8)
        assert page.inner_text('#error') == '' and not errors, (page.inner_text('#error'), errors)
        shown = page.evaluate(SHOWN)
        panel = {key: page.inner_text(f'#{key}') for key in ('status', 'speech', 'fps')}
        states = page.evaluate(SPEAKING, 6)
        page.screenshot(path=str(tmp_path / 'page.png'))
      finally:
        browser.close()
    metrics = asyncio.run(_get(url + '/metrics'))
    spoken = server.metrics.frames['speech']
  rate = probe['frames'] / probe['seconds']
  assert 20 <= rate <= 30, (probe['frames'], probe['seconds'], metrics)  # presented per second
  assert probe['width'] == 256
  assert spoken > 25, metrics  # the microphone's speech was lip-synced
  # the lower face leaves the idle photo while speech plays and comes back in the silences
  idle = np.asarray(probe['fromIdle'])
  assert (idle < 5).mean() > 0.2 and (idle > 10).mean() > 0.2, idle.round(1)
  speaking = idle[(idle < 5) | (idle > 10)] > 10
  assert np.count_nonzero(np.diff(speaking.astype(int)) == 1) >= 2, idle.round(1)  # each time
  # the whole picture is inside the 1280x720 window, as large as the space beside the panel
  # allows, and the screenshot shows it there
  left, top, width, height = shown['picture']
  assert left >= 0 and top >= 0 and left + width <= 1280 and top + height <= 720, shown
  assert height >= 400, shown
  screenshot = cv2.imread(str(tmp_path / 'page.png'))
  assert screenshot.shape == (720, 1280, 3)
  inside = screenshot[int(top) + 2:int(top + height) - 2, int(left) + 2:int(left + width) - 2]
  assert inside.std() > 20  # the avatar's face, not the page or the empty element
  assert panel['status'] == 'connected' and re.fullmatch(r'\d+ frames/s', panel['fps']), panel
  assert 20 <= int(panel['fps'].split()[0]) <= 30, panel
  assert {'speaking', 'idle'} <= set(states), states  # the server's state, as it changes
  print(f'Chromium presented {rate:.1f} frames/s over {probe["seconds"]:.1f} s; '
        'lower face vs idle per 0.1 s: '
        f'{idle.round(1).tolist()}')
