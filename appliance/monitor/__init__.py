"""Monitor: GPUs, engines and health sampled once a second, turned into one `Snapshot` per tick.

Modules, from the pure core out (the pure ones import no IO library):

- `maths`     counter rates that survive restarts; PromQL's histogram_quantile over a window (pure)
- `series`    bounded history for sparklines and the sample windows rates are computed over (pure)
- `scrape`    vLLM's and TEI's Prometheus text read with prometheus_client's parser (pure)
- `snapshot`  `Snapshot`, `ServiceStats`, `GpuStats`, `Alert`: what every face reads (pure)
- `alerts`    thresholds with hysteresis and one-line suggestions (pure)
- `render`    a snapshot as text for the terminal (pure)
- `samplers`  protocols and the real samplers: HTTP (httpx), NVML (through appliance.hardware),
              the container runtime
- `simulated` samplers for `--simulate`
- `monitor`   the 1 Hz loop (`Monitor`) and the gateway's view of it (`EngineLoadSignal`)

The blocking functions both faces call live in `appliance.operations.status`. Nothing is
re-exported here, so importing one pure module never drags in httpx.
"""
