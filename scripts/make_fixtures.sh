#!/usr/bin/env bash
# Regenerate the speech fixtures in tests/fixtures/ with espeak-ng + sox.
# 16 kHz mono; the long clip is Ogg Vorbis to stay small. hello.wav predates
# this script and is kept as is (other code relies on it).
set -euo pipefail
cd "$(dirname "$0")/../tests/fixtures"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

speak() { # voice out.wav text [words-per-minute]
  espeak-ng -v "$1" -s "${4:-160}" -w "$tmp/raw.wav" "$3"
  sox "$tmp/raw.wav" -r 16000 -c 1 -b 16 "$2"
}

speak en-us numbers.wav "One, two, three, four, five. The weather today is sunny and warm."
# Slow French: whisper-base (int8) translates this one sensibly ("coffee", "thank you").
speak fr cafe_fr.wav "Je voudrais un café et un croissant, s'il vous plaît. Merci beaucoup, madame." 130
sox -n -r 16000 -c 1 -b 16 silence.wav trim 0.0 3.0

long=""
for i in one two three four five six seven; do
  long+="Paragraph $i. The library opens at nine in the morning and closes at five in the evening. "
  long+="Visitors can borrow books, read newspapers, and use the computers for free. "
done
long+="This is the end of the long recording."
espeak-ng -v en-us -s 160 -w "$tmp/long.wav" "$long"
sox "$tmp/long.wav" -r 16000 -c 1 "$tmp/long16.wav"
sox "$tmp/long16.wav" -C 0 long_en.ogg
soxi -D numbers.wav cafe_fr.wav silence.wav long_en.ogg
