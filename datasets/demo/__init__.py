"""Demo corpus: songs with known beats and sections, and scripted editors with a known style.

- ``songs``: procedural multi-instrument songs (numpy synthesis, deterministic from a seed);
- ``midi``: renders of real General-MIDI compositions (pretty_midi + fluidsynth, or an
  additive fallback);
- ``editors``: persona editors that turn a raw song into an ``EditPlan`` from its features;
- ``delivery``: export realism (gain, compression, MP3 round trip, 48 kHz);
- ``build``: the CLI that writes ``runs/demo/data/{raw,edited,truth}/``.
"""
