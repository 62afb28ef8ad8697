"""The long-audio splitter: long uploads cut at silence, served piece by piece, stitched."""
