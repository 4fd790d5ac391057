"""The interactive projection layer of secure HeteroNN on CKKS (TenSEAL), without rotations.

One projection ``z = alpha @ W`` per collaborator (``alpha``: its B x n features, ``W``: n x m).
``W`` is additively shared: the host holds ``W_h``, the collaborator ``E``, ``W = W_h + E``
(FATE's interactive layer calls ``E`` the accumulated noise). Keys belong to the collaborator;
the host only ever holds a context without a secret key. Per batch:

1. collaborator -> host: ``[alpha]`` (``encrypt_features``);
2. host -> collaborator: ``[alpha * W_h + masks]`` (``host_forward``); the collaborator
   decrypts, sums each group of slots and adds ``alpha @ E`` (``collaborator_forward``);
   collaborator -> host: ``alpha @ W_h + eps_b + alpha @ E`` and ``[E]`` (``encrypt_share``);
   the host subtracts its mask ``eps_b``: ``z = alpha @ W``;
3. host -> collaborator (after ``train_a_batch``, ``delta = dL/dz``): ``[alpha^T delta + eps_g]``
   and ``[delta (W_h + E)^T]`` (``host_backward``); the host's share becomes
   ``W_h + lr * eps_g``, the collaborator's ``E - lr * (alpha^T delta + eps_g)``: together
   ``W - lr * alpha^T delta``, plain SGD on ``W``. The collaborator back-propagates
   ``delta W^T`` into its feature model (``collaborator_backward``).

Packing avoids rotations (no Galois keys): the host multiplies ciphertexts slot-wise by
plaintexts and adds ciphertexts that hold the same entries; every sum that would need a
rotation is done by the collaborator after decryption, over slots that the host masked with
CSPRNG noise whose group sums are what the collaborator may learn (``eps_b``, ``eps_g`` or
zero). ``alpha`` is sent once per batch, row-major, ``copies`` times per ciphertext (a
``FeaturePlan``), so each forward ciphertext serves ``copies`` output columns and the
gradient is summed over ciphertexts homomorphically.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.strategies.checks import ArrayRejected, check_array

#: Largest total coefficient modulus (bits) for 128-bit security at each ring degree
#: (HomomorphicEncryption.org standard, as enforced by SEAL).
MAX_COEFF_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


class SecureLayerError(ConfigError):
    """A ciphertext or a decrypted value that the protocol cannot have produced."""


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters and mask sizes of the secure projection.

    Parameters
    ----------
    poly_modulus_degree : int (default: 8192)
        Ring degree N; N/2 slots per ciphertext.
    coeff_mod_bit_sizes : tuple[int, ...] (default: (60, 40, 40, 60))
        Primes of the coefficient modulus: the first two stay after the one rescale of a
        plaintext product (100 bits of headroom), the third is the scale prime, the last is
        the special prime. Must total at most ``MAX_COEFF_BITS_128[N]`` (128-bit security).
    scale_bits : int (default: 40)
        log2 of the CKKS scale: about 1e-7 absolute error per slot.
    mask_bits : int (default: 24)
        log2 of the bound M of the per-slot masks U(-M, M): the collaborator sees each
        product term t plus such a mask, so t leaks at most |t| / 2M (statistical
        distance). Larger masks cost precision: masks are removed from decoded doubles
        after sums of up to 64 masked terms, an error of about 64 * M * 2^-53; at 2^24 that
        is 1e-7, below the CKKS error (about 1e-6 per projection value), at 2^30 it
        dominates (4e-6 to 1e-5 measured). The modulus keeps 100 bits after the rescale,
        far above 2^(24 + 40).
    share_mask : float (default: 16.0)
        Bound g of the mask eps_g ~ U(-g, g) on the weight gradient the collaborator
        decrypts. It moves both shares by lr * eps_g per batch (a random walk that keeps
        either share from revealing W), so it trades hiding of alpha^T delta against the
        shares' growth (CKKS error grows with |W_h|).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40
    mask_bits: int = 24
    share_mask: float = 16.0

    def __post_init__(self) -> None:
        limit = MAX_COEFF_BITS_128.get(self.poly_modulus_degree)
        total = sum(self.coeff_mod_bit_sizes)
        if limit is None or total > limit:
            raise ConfigError(
                f"CKKS parameters N={self.poly_modulus_degree}, {total} modulus bits are not "
                f"128-bit secure (at most {limit} bits for this N; N must be 4096..32768)"
            )
        headroom = sum(self.coeff_mod_bit_sizes[:-2]) - self.scale_bits - 2
        if len(self.coeff_mod_bit_sizes) < 3 or self.mask_bits + 8 > headroom:
            raise ConfigError(
                f"mask_bits={self.mask_bits} leaves no headroom in {self.coeff_mod_bit_sizes} "
                f"at scale 2^{self.scale_bits}: masks must stay below 2^{headroom - 8}"
            )
        if self.mask_bits > 40 or not self.share_mask > 0:
            raise ConfigError("mask_bits must be <= 40 (float64 precision) and share_mask > 0")

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return self.poly_modulus_degree // 2

    @property
    def mask(self) -> float:
        """M, the bound of the per-slot masks."""
        return float(2**self.mask_bits)

    @property
    def max_slot(self) -> float:
        """Largest absolute decrypted slot value the protocol can produce (masks dominate)."""
        return float(2 ** (self.mask_bits + 4))

    def to_list(self) -> list[int]:
        """Wire form (ConfigRecord): N, scale bits, mask bits, share mask * 1000, primes."""
        return [
            self.poly_modulus_degree, self.scale_bits, self.mask_bits,
            int(self.share_mask * 1000), *self.coeff_mod_bit_sizes,
        ]

    @classmethod
    def from_list(cls, values: list[int]) -> CkksParams:
        """Inverse of ``to_list`` (validated)."""
        if not isinstance(values, list) or len(values) < 7 or not all(isinstance(v, int) for v in values):
            raise SecureLayerError(f"malformed CKKS parameters {values!r}")
        return cls(values[0], tuple(values[4:]), values[1], values[2], values[3] / 1000)


#: Smaller parameters for tests only: one modulus prime after the rescale, 2^10 masks
#: (128-bit secure, but the masks hide product terms only to about 2^-10).
TEST_PARAMS = CkksParams(8192, (60, 40, 60), 40, mask_bits=10, share_mask=1.0)


def uniform(shape: tuple[int, ...] | int, bound: float) -> np.ndarray:
    """U(-bound, bound) from the operating system's CSPRNG (53 random bits per value)."""
    size = int(np.prod(shape))
    raw = np.frombuffer(os.urandom(8 * size), dtype=np.uint64) >> np.uint64(11)
    unit = raw.astype(np.float64) * (2.0**-53)
    return ((2.0 * unit - 1.0) * bound).reshape(shape)


def group_masks(shape: tuple[int, ...], axis: int, target: np.ndarray, bound: float) -> np.ndarray:
    """Masks U(-bound, bound)-sized whose sums along ``axis`` equal ``target``."""
    masks = uniform(shape, bound)
    masks -= masks.mean(axis=axis, keepdims=True)
    return masks + np.expand_dims(target, axis) / shape[axis]


@dataclass(frozen=True)
class FeaturePlan:
    """How a batch of features is packed: ``rows`` per ciphertext, each row ``copies`` times.

    A forward ciphertext of input ciphertext c and column group t serves output columns
    t*copies .. t*copies+copies-1 of rows c*rows .. c*rows+rows-1.
    """

    batch: int
    n: int
    m: int
    rows: int
    copies: int

    @classmethod
    def make(cls, batch: int, n: int, m: int, slots: int) -> FeaturePlan:
        """The plan with the fewest ciphertext bytes per batch (fresh ones count 1.5x)."""
        if batch < 1 or n < 1 or m < 1 or n > slots:
            raise ConfigError(f"cannot pack a batch of {batch} x {n} features into {slots} slots")
        best: tuple[float, int, int] | None = None
        for rows in range(1, min(batch, slots // n) + 1):
            copies = min(m, slots // (rows * n))
            cts, groups = math.ceil(batch / rows), math.ceil(m / copies)
            cost = 1.5 * cts + cts * groups + groups
            if best is None or cost < best[0]:
                best = (cost, rows, copies)
        assert best is not None
        return cls(batch, n, m, best[1], best[2])

    @property
    def cts(self) -> int:
        """Input ciphertexts."""
        return math.ceil(self.batch / self.rows)

    @property
    def groups(self) -> int:
        """Column groups (forward ciphertexts per input ciphertext; gradient ciphertexts)."""
        return math.ceil(self.m / self.copies)

    def block(self, c: int) -> slice:
        """Rows of input ciphertext ``c``."""
        return slice(c * self.rows, min((c + 1) * self.rows, self.batch))

    def columns(self, t: int) -> np.ndarray:
        """Output column of each copy in group ``t`` (``-1``: unused copy)."""
        cols = np.arange(t * self.copies, (t + 1) * self.copies)
        return np.where(cols < self.m, cols, -1)

    @property
    def used(self) -> int:
        """Slots used by the layout."""
        return self.copies * self.rows * self.n


def _by_column(values: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``values[..., col]`` per copy (zeros for unused copies): shape (copies, *values[..., 0])."""
    out = np.zeros((len(cols), *values.shape[:-1]))
    for q, col in enumerate(cols):
        if col >= 0:
            out[q] = values[..., col]
    return out


def _pad(values: np.ndarray, slots: int) -> ts.PlainTensor:
    """``values`` flattened and zero-padded to ``slots`` (a plaintext operand or input)."""
    flat = np.zeros(slots)
    flat[: values.size] = values.ravel()
    return ts.plain_tensor(flat)


# ----- the collaborator (holds the secret key) ------------------------------------------------
class CollaboratorKeys:
    """The collaborator's CKKS context with its secret key (never serialized with it to a peer).

    Parameters
    ----------
    context : ts.Context
        A private context.
    params : CkksParams
        Its parameters.
    """

    def __init__(self, context: ts.Context, params: CkksParams) -> None:
        self.context = context
        self.params = params

    @classmethod
    def create(cls, params: CkksParams) -> CollaboratorKeys:
        """Fresh keys (symmetric CKKS: no public key is needed, nothing to rotate)."""
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
        context.global_scale = 2.0**params.scale_bits
        return cls(context, params)

    def public_bytes(self) -> bytes:
        """The context for the host: parameters only, no secret key."""
        return self.context.serialize(
            save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )

    def private_bytes(self) -> bytes:
        """The context with its secret key, for this node's own state only."""
        return self.context.serialize(
            save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )

    @classmethod
    def from_private_bytes(cls, data: bytes, params: CkksParams) -> CollaboratorKeys:
        """Inverse of ``private_bytes``."""
        context = ts.context_from(data)
        context.global_scale = 2.0**params.scale_bits
        return cls(context, params)

    def __repr__(self) -> str:  # never print key material
        return f"CollaboratorKeys(N={self.params.poly_modulus_degree}, secret key withheld)"

    def encrypt(self, values: np.ndarray) -> bytes:
        """One ciphertext of ``values`` (padded with zeros to the slot count)."""
        return ts.ckks_vector(self.context, _pad(values, self.params.slots)).serialize()

    def decrypt(self, data: bytes, what: str) -> np.ndarray:
        """Decrypt one ciphertext from the host; reject values the protocol cannot produce."""
        vector = load_vector(self.context, data, what, self.params.slots)
        values = np.asarray(vector.decrypt(), dtype=np.float64)
        check_array(values, "the host", what, max_abs=self.params.max_slot)
        return values


def load_vector(context: ts.Context, data: bytes, what: str, slots: int) -> ts.CKKSVector:
    """A CKKS vector from peer bytes, or ``SecureLayerError`` naming ``what``."""
    if not isinstance(data, bytes) or not data:
        raise SecureLayerError(f"{what}: expected ciphertext bytes, got {type(data).__name__}")
    try:
        vector = ts.ckks_vector_from(context, data)
    except Exception as exc:  # TenSEAL raises plain Exceptions for malformed input
        raise SecureLayerError(f"{what}: not a ciphertext of this context ({exc})") from exc
    if vector.size() != slots:
        raise SecureLayerError(f"{what}: ciphertext of {vector.size()} slots, {slots} expected")
    return vector


def encrypt_features(keys: CollaboratorKeys, alpha: np.ndarray, plan: FeaturePlan) -> list[bytes]:
    """``[alpha]``: ``plan.cts`` ciphertexts, rows packed ``plan.copies`` times."""
    out = []
    for c in range(plan.cts):
        rows = alpha[plan.block(c)]
        packed = np.zeros((plan.copies, plan.rows, plan.n))
        packed[:, : len(rows)] = rows
        out.append(keys.encrypt(packed))
    return out


def share_copies(params: CkksParams, n: int, m: int) -> int:
    """Copies of the n x m share in one ciphertext (rows of the feature gradient per ciphertext)."""
    copies = params.slots // (n * m)
    if copies < 1:
        raise ConfigError(
            f"a projection of {n} x {m} needs {n * m} slots, more than the {params.slots} of "
            f"one ciphertext at N={params.poly_modulus_degree}: use a larger poly_modulus_degree"
        )
    return copies


def encrypt_share(keys: CollaboratorKeys, share: np.ndarray) -> bytes:
    """``[E]``: the collaborator's share, as many copies as fit in one ciphertext."""
    n, m = share.shape
    return keys.encrypt(np.broadcast_to(share, (share_copies(keys.params, n, m), n, m)))


def collaborator_forward(
    keys: CollaboratorKeys, cts: list[bytes], alpha: np.ndarray, share: np.ndarray, plan: FeaturePlan
) -> np.ndarray:
    """Decrypt the host's forward ciphertexts: ``alpha @ W_h + eps_b + alpha @ E`` (B x m)."""
    if len(cts) != plan.cts * plan.groups:
        raise SecureLayerError(f"{len(cts)} forward ciphertexts, {plan.cts * plan.groups} expected")
    out = np.zeros((plan.batch, plan.m))
    for c in range(plan.cts):
        block = plan.block(c)
        count = block.stop - block.start
        for t in range(plan.groups):
            values = keys.decrypt(cts[c * plan.groups + t], f"forward ciphertext {c}/{t}")
            sums = values[: plan.used].reshape(plan.copies, plan.rows, plan.n).sum(axis=2)
            for q, col in enumerate(plan.columns(t)):
                if col >= 0:
                    out[block, col] = sums[q, :count]
    return out + alpha @ share


def collaborator_backward(
    keys: CollaboratorKeys, wgrad: list[bytes], fgrad: list[bytes], plan: FeaturePlan
) -> tuple[np.ndarray, np.ndarray]:
    """Decrypt the host's backward ciphertexts: ``(alpha^T delta + eps_g, delta W^T)``."""
    if len(wgrad) != plan.groups:
        raise SecureLayerError(f"{len(wgrad)} weight-gradient ciphertexts, {plan.groups} expected")
    grad_w = np.zeros((plan.n, plan.m))
    for t, data in enumerate(wgrad):
        values = keys.decrypt(data, f"weight-gradient ciphertext {t}")
        sums = values[: plan.used].reshape(plan.copies, plan.rows, plan.n).sum(axis=1)
        for q, col in enumerate(plan.columns(t)):
            if col >= 0:
                grad_w[:, col] = sums[q]
    copies = share_copies(keys.params, plan.n, plan.m)
    if len(fgrad) != math.ceil(plan.batch / copies):
        raise SecureLayerError(f"{len(fgrad)} feature-gradient ciphertexts for a batch of {plan.batch}")
    grad_x = np.zeros((plan.batch, plan.n))
    for g, data in enumerate(fgrad):
        values = keys.decrypt(data, f"feature-gradient ciphertext {g}")
        rows = slice(g * copies, min((g + 1) * copies, plan.batch))
        sums = values[: copies * plan.n * plan.m].reshape(copies, plan.n, plan.m).sum(axis=2)
        grad_x[rows] = sums[: rows.stop - rows.start]
    return grad_w, grad_x


# ----- the host (a context without the secret key) --------------------------------------------
def public_context(data: bytes) -> ts.Context:
    """The collaborator's context as the host loads it; refused if it holds a secret key."""
    try:
        context = ts.context_from(data)
    except Exception as exc:
        raise SecureLayerError(f"not a TenSEAL context ({exc})") from exc
    if context.has_secret_key():
        raise SecureLayerError("the collaborator sent its secret key: refusing it")
    return context


@dataclass
class HostBatchState:
    """What the host keeps between the forward and the backward of one batch."""

    plan: FeaturePlan
    alpha: list[ts.CKKSVector]
    mask: np.ndarray  # eps_b, B x m
    share_ct: ts.CKKSVector | None = None


def host_forward(
    context: ts.Context, params: CkksParams, cts: list[bytes], w_host: np.ndarray, plan: FeaturePlan
) -> tuple[list[bytes], HostBatchState]:
    """``[alpha * W_h + masks]`` per (input ciphertext, column group); masks sum to ``eps_b``."""
    if len(cts) != plan.cts:
        raise SecureLayerError(f"{len(cts)} feature ciphertexts, {plan.cts} expected for {plan}")
    alpha = [load_vector(context, data, f"feature ciphertext {c}", params.slots) for c, data in enumerate(cts)]
    eps_b = uniform((plan.batch, plan.m), params.mask)
    out = []
    for c, vector in enumerate(alpha):
        block = plan.block(c)
        count = block.stop - block.start
        for t in range(plan.groups):
            cols = plan.columns(t)
            weights = np.zeros((plan.copies, plan.rows, plan.n))
            weights[:] = _by_column(w_host, cols)[:, None, :]  # W_h[j, col] at (q, row, j)
            target = np.zeros((plan.copies, plan.rows))
            target[:, :count] = _by_column(eps_b[block], cols)
            masks = group_masks((plan.copies, plan.rows, plan.n), 2, target, params.mask)
            out.append((vector * _pad(weights, params.slots) + _pad(masks, params.slots)).serialize())
    return out, HostBatchState(plan, alpha, eps_b)


def host_backward(
    context: ts.Context,
    params: CkksParams,
    state: HostBatchState,
    delta: np.ndarray,
    w_host: np.ndarray,
) -> tuple[list[bytes], list[bytes], np.ndarray]:
    """``([alpha^T delta + eps_g], [delta (W_h + E)^T], eps_g)`` from the batch's ``[alpha]``, ``[E]``."""
    plan = state.plan
    if state.share_ct is None:
        raise SecureLayerError("the collaborator's encrypted share of this batch is missing")
    eps_g = uniform((plan.n, plan.m), params.share_mask)
    wgrad = []
    for t in range(plan.groups):
        cols = plan.columns(t)
        total = None
        for c, vector in enumerate(state.alpha):
            block = plan.block(c)
            deltas = np.zeros((plan.copies, plan.rows, plan.n))
            deltas[:, : block.stop - block.start] = _by_column(delta[block], cols)[:, :, None]
            term = vector * _pad(deltas, params.slots)
            total = term if total is None else total + term
        masks = group_masks((plan.copies, plan.rows, plan.n), 1, _by_column(eps_g, cols), params.mask)
        wgrad.append((total + _pad(masks, params.slots)).serialize())  # type: ignore[operator]
    copies = share_copies(params, plan.n, plan.m)
    fgrad = []
    for g in range(math.ceil(plan.batch / copies)):
        rows = delta[g * copies : (g + 1) * copies]
        deltas = np.zeros((copies, plan.n, plan.m))
        deltas[: len(rows)] = rows[:, None, :]  # delta[b, k] at (q, j, k)
        own = deltas * w_host[None]  # the host's part delta[b, k] W_h[j, k], masked per term
        masks = group_masks((copies, plan.n, plan.m), 2, np.zeros((copies, plan.n)), params.mask)
        product = state.share_ct * _pad(deltas, params.slots)
        fgrad.append((product + _pad(own + masks, params.slots)).serialize())
    return wgrad, fgrad, eps_g


def unmask_projection(reply: np.ndarray, state: HostBatchState, params: CkksParams, what: str) -> np.ndarray:
    """``z = reply - eps_b`` after checking the reply's dtype, shape and range."""
    plan = state.plan
    check_array(reply, "the collaborator", what, max_abs=params.max_slot * plan.n, dtype=np.float64)
    if reply.shape != (plan.batch, plan.m):
        raise ArrayRejected(f"{what} from the collaborator rejected: shape {reply.shape}, ({plan.batch}, {plan.m}) expected")
    return reply - state.mask
