"""The numbers the fused step's Python, C and Triton sides share, defined once.

Python modules import them from here; the Triton kernels wrap them in ``tl.constexpr``; the C
kernel receives them as ``-D`` defines (:func:`c_defines`, added to the compiler flags, which the
build cache's key already hashes) and refuses to compile without them. ``tests/test_abi.py``
checks that no side spells one of them out again.
"""

from __future__ import annotations

__all__ = ["C_DEFINES", "c_defines"]

# Flags of a kernel call (``flags``). DECAY_IN_BODY: the element loop applies the weight decay
# itself (schedule-free AdamW's, at y after normalising), so the shared head does not.
# CAUTIOUS: the options' second pass masks the update (adamkit_apply_options).
MAXIMIZE, DECOUPLED, DECAY_IN_BODY, CAUTIOUS = 1, 2, 4, 8

# adamkit_step's arguments: the slots of hyper[] (doubles) and of shape[] (int64), the element
# loops, and the most state tensors a parameter may have (its row's states, and AMSGrad's).
H_LR, H_BETA1, H_BETA2, H_EPS, H_WD = range(5)
HYPER_SLOTS = 5
S_FLAGS, S_COUNT, S_STATES, S_SKIP, S_THREADS, S_PARAM_FMT, S_SCALES, S_ELEMENT = range(8)
SHAPE_SLOTS = 8
# (E_BF16, E_F16: Adafactor's kernel of whole tensors, adamkit_adafactor, which reads half
# tensors into fp32 and rounds each result to nearest.)
E_F32, E_F64, E_WIDE, E_BF16, E_F16 = range(5)
# adamkit_adafactor's arguments: the slots of its hyper[] (doubles) and shape[] (int64).
AF_RHO, AF_DECAY, AF_EPS1, AF_EPS2, AF_D, AF_SHRINK, AF_SIGN = range(7)
AF_HYPER_SLOTS = 7
AF_BATCH, AF_ROWS, AF_COLS, AF_ELEMENT, AF_THREADS = range(5)
AF_SHAPE_SLOTS = 5
#: The most scratch (floats) a thread of adamkit_adafactor may hold beyond 1/8 of the tensor:
#: a matrix of few rows and very many columns that would need more takes torch's operations.
AF_SCRATCH_FLOATS = 1 << 18
MAX_STATES = 3
#: Elements of a tensor one thread takes at a time (the plan numbers each tensor's chunks), and
#: of a tile of the low-precision loops (the caller's scratch holds one per parameter, gradient
#: and state: SCRATCH_FLOATS floats).
CHUNK, TILE = 65536, 1024
SCRATCH_FLOATS = (2 + MAX_STATES) * TILE
# A state tensor's codec word: non-negative (the unsigned 8-bit code), which half of its
# rounding hash it takes, and (from bit CODEC_STREAM) the hash's stream (a SALT_*).
CODEC_UNSIGNED, CODEC_HIGH, CODEC_STREAM = 1, 2, 8

#: A tensor's step scalars, as ``optim/_scalars.py`` writes them for the C and Triton kernels:
#: ROW doubles, a, b, c, d (the element loop's scalars), its kind (``_algorithms.KINDS``), t.
R_A, R_B, R_C, R_KIND, R_T, R_D = range(6)
ROW = 6

# Storage formats of a state tensor (``_precision``'s NATIVE, BF16, BF16_SR, Q8, F16).
F_F32, F_BF16, F_BF16_SR, F_Q8, F_F16 = 0, 1, 2, 3, 4

# Stochastic rounding: the seed of an element's hash is
# count * SEED_COUNT + salt * SEED_SALT + stream * SEED_STREAM (mod 2**32), one stream per use.
SEED_COUNT, SEED_SALT, SEED_STREAM = 0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35
SALT_MOMENTS, SALT_MAX, SALT_PARAM = 0, 2, 3
# The streams of an algorithm's third and further states: SALT_EXTRA, SALT_EXTRA + 1, ...
SALT_EXTRA = 4
# The multipliers of lowbias32, the 32-bit hash of the seeds (both rounds) and of each element's
# noise (its first round only).
HASH_MUL1, HASH_MUL2 = 0x7FEB352D, 0x846CA68B

# The 8-bit codes.
Q8_BLOCK = 256  # elements per float32 scale
M_OFFSET = 112 << 23  # float32 bits of 2**-15: the exp_avg code's smallest binade
V_OFFSET = 96 << 23  # 2**-31: the second moments'
HALF_ULP = 1 << 19  # half a unit of the codes' 3-bit mantissa, in float32 bits
M_NAN, M_INF = 125, 126  # exp_avg's magnitudes of NaN and infinity (signed by bit 7)
V_NAN, V_INF = 253, 254  # the unsigned code's
INF_BITS = 0x7F800000  # float32 bits of +inf; a magnitude's bits above it are a NaN's
NAN_BITS = 0x7FC00000  # the NaN every path decodes to (positive, quiet, no payload)

_UNSIGNED = {
    "HASH_MUL1",
    "HASH_MUL2",
    "SEED_COUNT",
    "SEED_SALT",
    "SEED_STREAM",
    "M_NAN",
    "M_INF",
    "V_NAN",
    "V_INF",
}
_UNSIGNED |= {"INF_BITS", "NAN_BITS"}

#: What C is given, by name (the C source refers to each as ``AK_<name>``).
C_DEFINES: dict[str, int] = {
    **{
        name: globals()[name]
        for name in [
            "H_LR",
            "H_BETA1",
            "H_BETA2",
            "H_EPS",
            "H_WD",
            "S_FLAGS",
            "S_COUNT",
            "S_STATES",
            "S_SKIP",
            "S_THREADS",
            "S_PARAM_FMT",
            "S_SCALES",
            "S_ELEMENT",
            "E_F32",
            "E_F64",
            "E_WIDE",
            "E_BF16",
            "E_F16",
            "AF_RHO",
            "AF_DECAY",
            "AF_EPS1",
            "AF_EPS2",
            "AF_D",
            "AF_SHRINK",
            "AF_SIGN",
            "AF_BATCH",
            "AF_ROWS",
            "AF_COLS",
            "AF_ELEMENT",
            "AF_THREADS",
            "AF_SCRATCH_FLOATS",
            "MAX_STATES",
            "CHUNK",
            "TILE",
            "SCRATCH_FLOATS",
            "CODEC_UNSIGNED",
            "CODEC_HIGH",
            "CODEC_STREAM",
            "MAXIMIZE",
            "DECOUPLED",
            "DECAY_IN_BODY",
            "CAUTIOUS",
            "ROW",
            "R_A",
            "R_B",
            "R_C",
            "R_KIND",
            "R_T",
            "R_D",
            "F_F32",
            "F_BF16",
            "F_BF16_SR",
            "F_Q8",
            "F_F16",
            "HASH_MUL1",
            "HASH_MUL2",
            "SEED_COUNT",
            "SEED_SALT",
            "SEED_STREAM",
            "SALT_MOMENTS",
            "SALT_MAX",
            "SALT_PARAM",
            "Q8_BLOCK",
            "M_OFFSET",
            "V_OFFSET",
            "HALF_ULP",
            "M_NAN",
            "M_INF",
            "V_NAN",
            "V_INF",
            "INF_BITS",
            "NAN_BITS",
        ]
    },
}


def c_defines() -> list[str]:
    """The compiler flags that give C these numbers: ``-DAK_ROW=5``, ... (unsigned ones as
    ``0x...u`` literals, as the C code uses them), and the element loops' kinds of the
    algorithm table: ``-DAK_K_ADAM=0``, ..., ``-DAK_KINDS=`` their number."""
    from ..optim._algorithms import KINDS  # the table imports this module

    kinds = {f"K_{kind.upper()}": code for kind, code in KINDS.items()}
    return [
        f"-DAK_{name}={value:#x}u" if name in _UNSIGNED else f"-DAK_{name}={value}"
        for name, value in {**C_DEFINES, **kinds, "KINDS": len(KINDS)}.items()
    ]
