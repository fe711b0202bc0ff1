"""A real deployment with Flower: a ServerApp and a ClientApp per site.

`server_app.app` and `client_app.app` run any algorithm with `RoundPieces`
(the FedAvg family) over a Flower SuperLink and one SuperNode per site.
docs/deployment.md describes how to run them; `deploy/flower/` is the
Flower app project that `flwr run` packs.
"""
