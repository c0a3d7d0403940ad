"""
The node's parameter services: rclpy's own, refusing what a peer sends instead of raising on it.

Any peer on the domain may call ``/<node>/set_parameters`` and the other parameter services.
rclpy's callbacks raise on a parameter whose ``ParameterValue.type`` is no known type (e.g. 77),
and an exception in a service callback ends the executor's spin and with it the node. rclpy also
creates a parameter named ``''`` when asked to (its check for undeclared names skips that one).
:class:`GuardedParameterService` answers such requests as refused, with a reason, and logs them
(throttled); any other failure inside a callback is answered the same way: refused for a set,
an empty answer for a query (what rclpy answers for names it does not know).
"""

import time
from typing import Any, Callable, Optional, Sequence, Tuple

from rcl_interfaces.msg import Parameter as ParameterMsg, SetParametersResult
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_service import ParameterService

from seg_perception.diagnostics import Throttle
from seg_training.base.logtext import loggable

PARAMETER_TYPES = frozenset(t.value for t in Parameter.Type)
WARN_PERIOD_S = 5.0


def refused(reason: str) -> SetParametersResult:
    """Return the result of a set request that was not carried out."""
    return SetParametersResult(successful=False, reason=reason)


def fault(parameters: Sequence[ParameterMsg]) -> Optional[Tuple[str, str]]:
    """
    Say what keeps rclpy from taking these parameter messages: (kind, reason), else None.

    The kind ('unknown type', 'no name') keys the throttled warning; the reason names the
    parameter and goes back to the peer.
    """
    for p in parameters:
        if p.value.type not in PARAMETER_TYPES:
            return 'unknown type', (f"parameter '{loggable(p.name)}': unknown type "
                                    f'{p.value.type} (known: {sorted(PARAMETER_TYPES)})')
        if not p.name:
            return 'no name', 'a parameter needs a name'
    return None


def _failure(error: Exception) -> Tuple[str, str]:
    return type(error).__name__, f'{type(error).__name__}: {loggable(error)}'


class GuardedParameterService(ParameterService):
    """rclpy's parameter services; a request they would raise on is refused and logged."""

    def __init__(self, node: Node) -> None:
        self._logger = node.get_logger()
        self._throttle = Throttle(WARN_PERIOD_S)
        super().__init__(node)

    def _set_parameters_callback(self, request: Any, response: Any) -> Any:
        for p in request.parameters:  # each on its own, as rclpy sets them
            problem = fault([p])
            if problem is None:
                try:
                    one = super()._set_parameters_callback(
                        SetParameters.Request(parameters=[p]), SetParameters.Response())
                    response.results.extend(one.results)
                    continue
                except Exception as e:
                    problem = _failure(e)
            response.results.append(refused(self._report('set_parameters', *problem)))
        return response

    def _set_parameters_atomically_callback(self, request: Any, response: Any) -> Any:
        problem = fault(request.parameters)  # one bad parameter: none is set
        if problem is None:
            try:
                return super()._set_parameters_atomically_callback(request, response)
            except Exception as e:
                problem = _failure(e)
        response.result = refused(self._report('set_parameters_atomically', *problem))
        return response

    def _get_parameters_callback(self, request: Any, response: Any) -> Any:
        return self._query('get_parameters', super()._get_parameters_callback, request, response)

    def _describe_parameters_callback(self, request: Any, response: Any) -> Any:
        return self._query('describe_parameters', super()._describe_parameters_callback, request,
                           response)

    def _get_parameter_types_callback(self, request: Any, response: Any) -> Any:
        return self._query('get_parameter_types', super()._get_parameter_types_callback, request,
                           response)

    def _list_parameters_callback(self, request: Any, response: Any) -> Any:
        return self._query('list_parameters', super()._list_parameters_callback, request,
                           response)

    def _query(self, service: str, callback: Callable[[Any, Any], Any], request: Any,
               response: Any) -> Any:
        try:
            return callback(request, response)
        except Exception as e:
            self._report(service, *_failure(e))
            return type(response)()

    def _report(self, service: str, kind: str, reason: str) -> str:
        """Log a refused request (once per period for a service and kind); return the reason."""
        allowed, held = self._throttle.allow((service, kind), time.monotonic())
        if allowed:
            more = f' ({held} more like it since the last warning)' if held else ''
            self._logger.warning(f'{service}: refused a request: {reason}{more}')
        return reason
