"""The runtime: profile → containers, and keeping them as the profile says.

- `specs` (pure): `container_specs(profile, box, options=SpecOptions())`, `vllm_command`,
  `weights_path` — the one layout of the models directory.
- `plan` (pure): `make_plan(desired, observed)` → create / replace / remove / keep.
- `apply`: `plan_profile`, `apply_profile` and the rollback — the only code that creates or
  replaces containers. `diagnosis`: why an engine did not start, from its log.
- `containers`: `status`, `down`, `service_logs`, `follow_service_logs` of what runs.
- `engine`: the `ContainerEngine` protocol they all take; `docker.DockerEngine` is its adapter.
- `lock`: one apply at a time per box. `compose`: the same specs as a docker compose file.

Submodules are imported where used (not here) so `appliance --help` does not load docker-py.
"""
