#!/usr/bin/env bash
# One hour of speech through `make up CONFIG=examples/long-audio.yaml`: every response
# format and a stream, split across the example's two CPU tiny.en servers. Prints each
# answer's status, type and time, then checks what came back is whole.
# Usage: scripts/long-audio-hour.sh [OUT_DIR]   (about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d /tmp/long-audio-hour-XXXX)}
mkdir -p "$out"
make -s install
.venv/bin/python -c "from pathlib import Path; from testkit.clips import make_clip; make_clip(Path('$out/hour.wav'), 3600)"
make -s up CONFIG=examples/long-audio.yaml > "$out/up.log" 2>&1 &
up=$!
trap 'kill -TERM $up 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do grep -q "whisper-gateway is up" "$out/up.log" && break; sleep 1; done
url=http://127.0.0.1:8000/v1/audio/transcriptions
ask=(-s -H "x-long-audio: split" -F "file=@$out/hour.wav" -F model=openai/whisper-tiny.en)
for f in json text srt vtt verbose_json; do
  curl "${ask[@]}" -F response_format=$f -o "$out/hour.$f" \
    -w "$f %{http_code} %{content_type} %{time_total} s\n" "$url"
done
curl "${ask[@]}" -N -F stream=true -o "$out/hour.sse" \
  -w "stream %{http_code} %{content_type} first byte %{time_starttransfer} s, all %{time_total} s\n" "$url"
.venv/bin/python - "$out" <<'PY'
import json, re, sys
from pathlib import Path
d = Path(sys.argv[1])
j = json.loads((d / "hour.json").read_text())
v = json.loads((d / "hour.verbose_json").read_text())
srt = re.findall(r"--> (\d\d:\d\d:\d\d,\d\d\d)", (d / "hour.srt").read_text())
done = [json.loads(l[6:]) for l in (d / "hour.sse").read_text().splitlines() if '"transcript.text.done"' in l]
print(f"json: {len(j['text'].split())} words, usage {j['usage']}")
print(f"verbose_json: duration {v['duration']}, {len(v['segments'])} segments, last ends {v['segments'][-1]['end']}")
print(f"srt: {len(srt)} cues, last ends {srt[-1]}; vtt: {(d / 'hour.vtt').read_text().count(' --> ')} cues")
print(f"stream: one done event: {len(done) == 1}, {len(done[0]['text'].split())} words")
PY
