#!/usr/bin/env python3
"""Fixtures for tests/test_wtype.c: weight types quantized and dequantized by the reference
packages. GGUF types (BF16, F16, Q8_0, Q4_0, Q4_1) by gguf-py's gguf.quants.quantize/dequantize;
Q4_K, Q5_K, Q6_K (which gguf-py only reads) as random blocks dequantized by gguf-py; NF4 and FP4
by bitsandbytes' quantize_4bit/dequantize_4bit on the CPU, with and without double quantization
(compress_statistics=True).

    python tests/gen_wtype_fixtures.py tests/fixtures      (writes tests/fixtures/wtype.bin)

Format (little-endian): "TWT1", u32 count, then per case: str name, str type, u32 rows, u32 cols,
u32 double_quant, then 7 blobs (u32 nbytes, bytes): src f32 (rows*cols), codes, absmax f32,
absmax_q u8, absmax2 f32, offset f32 (0 or 4 bytes), dequantized f32 (rows*cols). A str is
u32 length + bytes. Unused blobs are empty."""
import os
import struct
import sys

import numpy as np


def blob(b):
    b = bytes(b)
    return struct.pack("<I", len(b)) + b


def sstr(s):
    return blob(s.encode())


def case(name, ty, src, codes, deq, absmax=b"", absmax_q=b"", absmax2=b"", offset=b"", dq=0):
    rows, cols = src.shape
    return (sstr(name) + sstr(ty) + struct.pack("<III", rows, cols, dq) +
            blob(src.astype(np.float32).tobytes()) + blob(codes) + blob(absmax) +
            blob(absmax_q) + blob(absmax2) + blob(offset) +
            blob(np.asarray(deq, dtype=np.float32).tobytes()))


def awkward(rng, rows, cols, block):
    """random values with, block by block: zeros, an all-equal block, exact halves (ties of the
    rounding), a negative largest magnitude, tiny and large magnitudes"""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    flat = x.reshape(-1)
    nb = flat.size // block
    for b in range(nb):
        blk = flat[b * block:(b + 1) * block]
        kind = b % 6
        if kind == 1:
            blk[:] = 0.0
        elif kind == 2:
            blk[:] = np.float32(0.75)
        elif kind == 3:
            # multiples of 1/16 of a power of two: many x/d land exactly on .5
            blk[:] = (rng.integers(-16, 17, blk.size) / 16.0).astype(np.float32)
            blk[0] = np.float32(-1.0)
        elif kind == 4:
            blk[:] *= np.float32(1e-3)
            blk[rng.integers(0, blk.size)] = np.float32(-7.5)
        elif kind == 5:
            blk[::3] = 0.0
    return x


def gguf_cases(rng):
    from gguf.constants import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize

    out = []
    for ty, q, rows, cols, block in (("BF16", Q.BF16, 3, 40, 8), ("F16", Q.F16, 3, 40, 8),
                                     ("Q8_0", Q.Q8_0, 5, 96, 32), ("Q4_0", Q.Q4_0, 5, 96, 32),
                                     ("Q4_1", Q.Q4_1, 5, 96, 32), ("Q8_0", Q.Q8_0, 1, 32, 32),
                                     ("Q4_0", Q.Q4_0, 3, 32, 32), ("Q4_1", Q.Q4_1, 3, 32, 32)):
        x = awkward(rng, rows, cols, block)
        if ty in ("BF16", "F16"):
            x.reshape(-1)[:4] = [np.float32(1.0 + 2.0**-8), np.float32(1.0 + 3 * 2.0**-8),
                                 np.float32(1.0 + 2.0**-11), np.float32(65520.0)]
        with np.errstate(over="ignore"):  # F16's 65520 rounds to inf on purpose
            codes = quantize(x, q)
        deq = dequantize(codes, q).reshape(rows, cols)
        out.append(case(f"{ty.lower()}_{rows}x{cols}", ty, x, codes.tobytes(), deq))
    # the K types: random blocks (scales kept moderate), dequantized by gguf-py
    for ty, q, nbytes, dpos in (("Q4_K", Q.Q4_K, 144, (0, 2)), ("Q5_K", Q.Q5_K, 176, (0, 2)),
                                ("Q6_K", Q.Q6_K, 210, (208,))):
        rows, nblk = 3, 2
        raw = rng.integers(0, 256, (rows * nblk, nbytes), dtype=np.uint8)
        for p in dpos:
            d = (rng.standard_normal(rows * nblk) * 0.01).astype(np.float16)
            raw[:, p:p + 2] = d.view(np.uint8).reshape(-1, 2)
        raw = raw.reshape(rows, nblk * nbytes)
        deq = dequantize(raw, q).reshape(rows, nblk * 256)
        out.append(case(f"{ty.lower()}_{rows}x{nblk * 256}", ty, deq, raw.tobytes(), deq))
    return out


def bnb_cases(rng):
    import torch
    import bitsandbytes.functional as F

    out = []
    for qt in ("nf4", "fp4"):
        for rows, cols, dq in ((3, 64, 0), (5, 192, 0), (7, 128, 1), (5, 3328, 1)):
            x = awkward(rng, rows, cols, 64)
            # ties of the bucketing: values exactly on midpoints of the code (in units of absmax)
            code = F.get_4bit_type(qt, device="cpu")
            srt = torch.sort(code).values
            mids = ((srt[:-1] + srt[1:]) / 2).numpy()
            blk = x.reshape(-1)[64 * 5:64 * 6] if x.size >= 64 * 6 else x.reshape(-1)[:64]
            blk[:] = rng.choice(mids, blk.size).astype(np.float32)
            blk[0] = np.float32(1.0)
            t = torch.from_numpy(x.copy())
            packed, st = F.quantize_4bit(t, blocksize=64, quant_type=qt, compress_statistics=bool(dq))
            deq = F.dequantize_4bit(packed, st, quant_type=qt).numpy()
            name = f"{qt}{'_dq' if dq else ''}_{rows}x{cols}"
            codes = packed.numpy().reshape(-1).tobytes()
            if dq:
                out.append(case(name, qt.upper(), x, codes, deq,
                                absmax_q=st.absmax.numpy().astype(np.uint8).tobytes(),
                                absmax2=st.state2.absmax.numpy().astype(np.float32).tobytes(),
                                offset=np.float32(st.offset.item()).tobytes(), dq=1))
            else:
                out.append(case(name, qt.upper(), x, codes, deq,
                                absmax=st.absmax.numpy().astype(np.float32).tobytes()))
    return out


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    rng = np.random.default_rng(13)
    cases = gguf_cases(rng) + bnb_cases(rng)
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "wtype.bin")
    with open(path, "wb") as f:
        f.write(b"TWT1" + struct.pack("<I", len(cases)) + b"".join(cases))
    print(f"{path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
