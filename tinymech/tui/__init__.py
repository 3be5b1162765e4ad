"""tinymech's terminal UI, opened by `tinymech tui [--model M] [--sae S ...] [PROMPT]`.

The selected token drives every panel: predictions, attention, SAE features,
logit lens; generation can be steered with a feature or a head ablation.
`app.make_app` builds the app (for the CLI and for tests), `app.run_tui`
loads a model and runs it."""
