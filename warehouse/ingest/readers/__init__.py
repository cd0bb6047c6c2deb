"""One module per input format; each exposes `inputs(ctx)` and `read(ctx, emit)`."""
