"""CPU and memory of the server and client pods: the defaults of the resource parameters."""

from dataclasses import dataclass, fields
from decimal import Decimal

from kubernetes.utils import parse_quantity


def _quantity(name: str, value: str) -> Decimal:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a Kubernetes quantity such as '500m' or '2Gi'")
    try:
        return parse_quantity(value)
    except ValueError:
        raise ValueError(
            f"{name} {value!r} is not a Kubernetes quantity (e.g. '500m', '2', '512Mi', '4Gi')"
        ) from None


@dataclass(frozen=True)
class PodResources:
    """CPU and memory of one kind of pod, as Kubernetes quantities (``"500m"``, ``"4Gi"``).

    They are the defaults of the pipeline's ``<role>_cpu_request`` ... parameters: a run
    can change them in the KFP UI (the backend's driver resolves them when it makes the
    pod), and ``compile.py --server-cpu-request ...`` bakes other defaults in.
    """

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str

    def __post_init__(self) -> None:
        for kind in ("cpu", "memory"):
            request = _quantity(f"{kind}_request", getattr(self, f"{kind}_request"))
            limit = _quantity(f"{kind}_limit", getattr(self, f"{kind}_limit"))
            if request > limit:
                raise ValueError(
                    f"{kind} request {getattr(self, f'{kind}_request')!r} exceeds its limit "
                    f"{getattr(self, f'{kind}_limit')!r}: Kubernetes refuses such a pod"
                )


FIELDS = tuple(f.name for f in fields(PodResources))

# The server only averages weights, but exports model.keras through TensorFlow at the end;
# clients train. Raise these for CNNs on cifar10 or larger models; lower them to fit a
# small node (the requests of the server and N clients must fit at once, plus KFP's drivers).
SERVER_RESOURCES = PodResources("500m", "2", "1Gi", "4Gi")
CLIENT_RESOURCES = PodResources("1", "2", "1Gi", "4Gi")
