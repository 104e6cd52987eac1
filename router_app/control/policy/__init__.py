"""Pure scheduling policy: no I/O, no clock (the owner passes `now`), no imports from the rest of the router.
`vocabulary` (phases, model specs, effects), `scheduler` (the state machine), `placement` (memory arithmetic and
victim choice). Property-tested and mutation-tested (docs/architecture.md)."""
