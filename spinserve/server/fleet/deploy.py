"""Starting and stopping a fleet: the board actor, the replicas, the ingress, on Ray Serve.

    ray.init(...)  ->  FleetBoard actor  ->  EngineReplica x N (router: AffinityRouter)
                                         ->  FleetIngress (HTTP, the OpenAI API)

`start_fleet` joins the Ray cluster at ``ray_address`` (or starts a Ray instance of this
machine), starts Ray Serve's HTTP proxy on the server's host and port and
deploys the application; `serve_fleet` does that and waits for SIGINT/SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from spinserve.engine.engine import LLMEngine
from spinserve.server.config import ServerConfig
from spinserve.server.fleet.board import FleetBoard
from spinserve.server.fleet.config import FleetConfig
from spinserve.server.fleet.ingress import FleetIngress
from spinserve.server.fleet.replica import EngineReplica
from spinserve.server.fleet.router import AffinityRouter

logger = logging.getLogger("spinserve.fleet")
APP_NAME = "spinserve"
NAMESPACE = "spinserve"
REPLICAS = "EngineReplica"  # the replicas' deployment
OBJECT_STORE_BYTES = 200 * 1024 * 1024  # requests and updates are small


def board_name(app_name: str) -> str:
    return f"{app_name}-board"


def fleet_application(
    make_engine: Callable[[], LLMEngine],
    model_name: str,
    server: ServerConfig,
    fleet: FleetConfig,
    num_threads: int,
    app_name: str = APP_NAME,
) -> serve.Application:
    """The Ray Serve application; Ray must be running."""
    # Detached: the application outlives the process that deployed it (as Ray Serve's
    # applications do); `serve_fleet` removes the board with the application.
    board = (
        ray.remote(FleetBoard)
        .options(
            name=board_name(app_name),
            namespace=NAMESPACE,
            num_cpus=0,
            lifetime="detached",
            get_if_exists=True,
        )
        .remote()
    )
    replicas = serve.deployment(EngineReplica, name=REPLICAS).options(
        **replica_options(server, fleet, num_threads)
    )
    ingress = serve.deployment(FleetIngress, name="Ingress").options(
        num_replicas=1,
        max_ongoing_requests=max(1000, 4 * server.max_queue * fleet.most_replicas),
        ray_actor_options={"num_cpus": 0},
    )
    app = replicas.bind(make_engine, model_name, server, fleet.prior_sync_s, num_threads, board)
    return ingress.bind(app, board, server)


def replica_options(server: ServerConfig, fleet: FleetConfig, num_threads: int) -> dict:
    """The replicas' Ray Serve deployment options: a count, or Ray Serve's autoscaling
    settings as given; one replica takes at most ``max_queue`` requests at once."""
    scaling: dict = (
        {"autoscaling_config": fleet.autoscaling_config()}
        if fleet.autoscaling
        else {"num_replicas": fleet.replicas}
    )
    cpus = fleet.replica_cpus if fleet.replica_cpus is not None else num_threads
    return scaling | {
        "max_ongoing_requests": server.max_queue,
        "ray_actor_options": {"num_cpus": cpus},
        "request_router_config": RequestRouterConfig(
            request_router_class=AffinityRouter,
            request_router_kwargs={"slack": fleet.affinity_slack},
        ),
        "health_check_period_s": 2.0,
        "graceful_shutdown_timeout_s": server.shutdown_timeout + 5,
    }


def start_fleet(
    make_engine: Callable[[], LLMEngine],
    model_name: str,
    server: ServerConfig,
    fleet: FleetConfig,
    num_threads: int,
    app_name: str = APP_NAME,
) -> str:
    """Deploy and return the URL; Ray is started (or joined) if it is not running."""
    if not ray.is_initialized():
        local = {} if fleet.ray_address else local_ray_options()
        ray.init(address=fleet.ray_address, namespace=NAMESPACE, **local)
    serve.start(http_options={"host": server.host, "port": server.port})
    app = fleet_application(make_engine, model_name, server, fleet, num_threads, app_name)
    serve.run(app, name=app_name, route_prefix="/", external_scaler_enabled=not fleet.autoscaling)
    return f"http://{server.host}:{server.port}"


def scale_fleet(num_replicas: int, app_name: str = APP_NAME) -> None:
    """Set the replica count of a running fleet that does not autoscale: Ray Serve adds or
    removes replicas and keeps the others. This is what Ray's dashboard does for its
    external scaling API (``POST /api/v1/applications/APP/deployments/DEP/scale``), without
    needing the dashboard; the controller's method is not a public Python API of Ray."""
    from ray.serve._private.common import DeploymentID
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    replicas = DeploymentID(name=REPLICAS, app_name=app_name)
    ray.get(controller.update_deployment_replicas.remote(replicas, num_replicas))


def local_ray_options() -> dict:
    """A Ray of this machine for one fleet: no dashboard, a small object store. Ray's own
    ports listen on every interface (it offers no loopback-only mode; its token
    authentication, on by default, guards them); the HTTP endpoint binds ``--host``."""
    return {
        "num_cpus": os.cpu_count(),
        "include_dashboard": False,
        "object_store_memory": OBJECT_STORE_BYTES,
    }


def serve_fleet(
    make_engine: Callable[[], LLMEngine],
    model_name: str,
    server: ServerConfig,
    fleet: FleetConfig,
    num_threads: int,
) -> None:
    """Serve until SIGINT or SIGTERM, then take the application down (its replicas drain
    first): on a cluster it joined, only the application; on its own Ray, Ray Serve and Ray."""
    url = start_fleet(make_engine, model_name, server, fleet, num_threads)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    logger.info("serving %s on %s with Ray Serve", model_name, url)
    stop.wait()
    logger.info("shutting down the fleet")
    stop_fleet(own_ray=not fleet.ray_address)


def stop_fleet(own_ray: bool, app_name: str = APP_NAME) -> None:
    """Take the application and its board down; Ray Serve and Ray too when ``own_ray``."""
    serve.delete(app_name)
    with contextlib.suppress(ValueError):  # no board: nothing to remove
        ray.kill(ray.get_actor(board_name(app_name), namespace=NAMESPACE))
    if own_ray:
        serve.shutdown()
    ray.shutdown()
