"""The use cases: what the CLI and the TUI both do, each verb a module that returns data.

Faces (`appliance.cli`, `appliance.tui`) parse and render; they call these verbs and never wire
the domain together themselves, so the two cannot drift (they did: a TUI deploy once left the
box without a gateway). Nothing here prints or exits; errors are `appliance.errors` exceptions.

- `applied`     the profile this box runs: `--profile`, $LLM_APPLIANCE_PROFILE, the applied copy
- `engine`      the container engine for one operation (`engine_session`)
- `plan`        what an apply would change, with the fit check (`plan`, `plan_from_nothing`)
- `deploy`      weights → apply → the gateway's unit (`deploy`, `deploy_profile`)
- `containers`  what runs: `service_status`, `running_services`, logs, `take_down`,
                `mounted_weights`
- `status`      the monitor wired for a profile, a URL or a simulated box, and one snapshot,
                a live view or a check of it (`profile_samplers`, `sample_status`, …)

Submodules are imported where used, not here, so `appliance --help` loads none of them.
"""
