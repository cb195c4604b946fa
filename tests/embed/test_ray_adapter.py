"""The Ray Data stages' CPU requests: what Ray Data's own bookkeeping can pack."""

from __future__ import annotations

from sleepsound.embed.ray_adapter import RAY_RESOURCE_STEP, packable_cpus


def _fit(node_cpus: float, bundles: list[float]) -> int:
    """How many of ``bundles`` fit on a node, subtracted one by one in floats (as Ray Data's
    autoscaling coordinator reserves a dataset's CPUs)."""
    left, fitted = node_cpus, 0
    for cpus in bundles:
        if left >= cpus:
            left -= cpus
            fitted += 1
    return fitted


def test_readers_and_the_model_actor_fit_a_node_in_floating_point_once_packed() -> None:
    # The bench's split on 2 cores, as configured: the actor's 0.05 no longer fits beside two readers.
    assert _fit(2.0, [0.975, 0.975, 0.05]) == 2
    for cores in range(1, 65):
        reader, actor = packable_cpus((cores - 0.05) / cores), packable_cpus(0.05)
        assert _fit(float(cores), [reader] * cores + [actor]) == cores + 1
        assert _fit(float(cores), [actor] + [reader] * (cores + 1)) == cores + 1  # and no more readers than cores


def test_packed_requests_are_in_ray_core_steps_and_exact_ones_stay() -> None:
    for cpus in (0.001, 0.05, 0.1, 0.3, 0.975, 0.999, 1.3, 3.3):
        packed = packable_cpus(cpus)
        assert cpus - 3 * RAY_RESOURCE_STEP < packed < cpus or packed == RAY_RESOURCE_STEP
        assert abs(packed / RAY_RESOURCE_STEP - round(packed / RAY_RESOURCE_STEP)) < 1e-6  # Ray core's 1/10000 units
    assert [packable_cpus(c) for c in (0.0625, 0.5, 1, 1.0, 1.5, 4)] == [0.0625, 0.5, 1.0, 1.0, 1.5, 4.0]
    assert _fit(2.0, [packable_cpus(1.0)] + [packable_cpus(0.5)] * 3) == 3  # the defaults: one actor, two readers
