"""Demo corpus: songs with known beats and sections, and scripted editors with a known style.

A layer of its own, above ``envs``: the scripted editors are *users* of the tool (they
plan edits as ``envs.plan.EditPlan`` and render them with ``envs.render``), so this
package imports ``envs`` while the rest of ``datasets`` never imports it (or ``envs``).
It lives under ``datasets/`` because that is where the user's layout puts the corpus
generator (../shared/DESIGN.md); tests/test_import_graph.py holds both rules.

- ``songs``: procedural multi-instrument songs (numpy synthesis, deterministic from a seed);
- ``midi``: renders of real General-MIDI compositions (pretty_midi + fluidsynth, or an
  additive fallback);
- ``editors``: persona editors that turn a raw song into an ``EditPlan`` from its features;
- ``delivery``: export realism (gain, compression, MP3 round trip, 48 kHz);
- ``build``: the CLI that writes ``runs/demo/data/{raw,edited,truth}/``.
"""
