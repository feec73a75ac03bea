"""Parameters and forward GFLOPs per image of HalfUNetDecoder, counted by torch's FLOP counter.

    python benchmarks/model_size.py

FLOPs count a multiply-add as two operations (convolutions and matrix products; element-wise
work is not counted). The input is a 32-dimensional embedding.
"""

import torch
from torch.utils.flop_counter import FlopCounterMode

from _results import markdown_table, write_section
from cebra_halfunet import HalfUNetDecoder

LATENTS = (512, 1024, 2048)
SIZES = ((64, 128), (128, 256), (256, 512))


def main():
    rows = []
    for latent_dim in LATENTS:
        for size in SIZES:
            decoder = HalfUNetDecoder(32, 1, size, latent_dim)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                decoder(torch.randn(1, 32))
            parameters = sum(p.numel() for p in decoder.parameters())
            rows.append([latent_dim, type(decoder.body).__name__, f"{size[0]}x{size[1]}",
                         f"{parameters / 1e6:.2f}", f"{counter.get_total_flops() / 1e9:.2f}"])
    table = markdown_table(["latent_dim", "body", "output", "parameters (M)", "forward GFLOPs / image"], rows)
    write_section("Model size", table, "One gray output channel; RGB adds a few MFLOPs in the output layers only.")


if __name__ == "__main__":
    main()
