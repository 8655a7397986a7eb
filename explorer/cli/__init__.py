"""The `explorer` command line: `main` builds the parser from one module per command group; `options`
holds what the groups share (model options, JSON output, opening a cache)."""
