"""The OpenAI-compatible front door: API keys, routing to vLLM / TEI, fallback to a remote API.

Kept free of imports so that `appliance keys …` and `appliance fallback …` stay fast; import the
submodule you need:

* `appliance.gateway.config` — `GatewayConfig` (`GatewayConfig.from_profile`), `Listen`;
* `appliance.gateway.keys` — `create_key`, `list_keys`, `revoke_key`;
* `appliance.gateway.state` — `read_fallback`, `set_fallback`;
* `appliance.gateway.server` — `run_gateway` (foreground, uvicorn), `preflight`;
* `appliance.gateway.policy` — the pure routing policy and the `LoadSignal` protocol;
* `appliance.gateway.app` — the ASGI application itself;
* `appliance.gateway.upstream` — the pooled upstream clients (`LeanPool`, `HttpxPool`);
* `appliance.gateway.protocol` — uvicorn's HTTP protocol with limits on what a client may hold;
* `appliance.gateway.openai_errors` — every error answered in OpenAI's shape.
"""
