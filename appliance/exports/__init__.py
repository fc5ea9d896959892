"""The road past one box: configurations for tools the operator already runs.

- `appliance.exports.prometheus` — a Prometheus scrape config for vLLM, TEI, the gateway and
  NVIDIA's DCGM exporter (`appliance export prometheus`);
- `appliance.exports.grafana` — a Grafana dashboard over those metrics (`appliance export grafana`);
- `appliance.exports.k8s` — Kubernetes manifests, or Helm values for vLLM's production-stack chart,
  for the same profile (`appliance export k8s`).

Pure: each builds documents (dicts) from a profile and returns text; the only IO is writing the
file or directory the caller names. Nothing is re-exported here, so importing one stays cheap.
"""
