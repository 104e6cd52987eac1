"""Memory: GGUF metadata (`gguf`), footprint estimates (`estimate`), device capacities and measured use
(`devices`, NVML or RSS), and what the router learned about each model (`history`). No scheduling here."""
