"""Why the VAE's fp32 bound is rel-L2 1e-5 and not 1e-6: torch's own fp32 VAE is already 1.5-4.4e-6 off float64."""
import copy

import torch

from nextstep_trt.core.metrics import compare
from nextstep_trt.core.tolerances import FP32_GRAPH, FP32_VAE


def test_vae_fp32_noise_floor_exceeds_the_generic_bound(tiny_bundle):
    dec32 = tiny_bundle.vae.decoder
    dec64 = copy.deepcopy(dec32).double()
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        r32, r64 = dec32(x).numpy(), dec64(x.double()).numpy()
    floor = compare(r64, r32).rel_l2
    # the generic 1e-6 bound is below what fp32 itself achieves on this graph; the VAE bound sits above two floors
    assert floor > FP32_GRAPH.rel_l2, floor
    assert 2 * floor < FP32_VAE.rel_l2 * 1.5, floor
