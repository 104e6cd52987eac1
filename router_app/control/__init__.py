"""The control plane: the switcher owns all scheduling state (`switcher`, requests' `tickets`), read-only
`views` of it, and the pure `policy` (vocabulary, scheduler, placement) it asks what to do."""
