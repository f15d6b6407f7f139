"""Key styles of PyTorch weight norm: finding ``g``/``v`` pairs and renaming between styles.

* ``legacy``: ``torch.nn.utils.weight_norm`` stores ``<mod>.<name>_g`` and ``<mod>.<name>_v``.
* ``parametrize``: ``torch.nn.utils.parametrizations.weight_norm`` stores
  ``<mod>.parametrizations.<name>.original0`` (g) and ``.original1`` (v).

``<mod>.`` is empty for a module at the top level; ``<name>`` is any parameter name.
Pairs are found by key names only; shapes are checked by :mod:`wnconvert.numerics`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .choices import STYLES, Style
from .errors import InputError

_PARAMETRIZE_MARK = "parametrizations."


@dataclass(frozen=True)
class PairKeys:
    """Where one weight-normed parameter lives in a state dict.

    ``weight_key`` is the key the plain (folded) parameter has: ``<mod>.<name>``.
    """

    weight_key: str
    g_key: str
    v_key: str
    style: Style

    @property
    def module(self) -> str:
        """The module path (``""`` at the top level)."""
        return self.weight_key.rpartition(".")[0]

    @property
    def param(self) -> str:
        """The parameter name inside the module (``weight``, ``weight_hh_l0``, ...)."""
        return self.weight_key.rpartition(".")[2]


def pair_keys(weight_key: str, style: Style) -> PairKeys:
    """The ``g``/``v`` keys ``weight_key`` gets in ``style``."""
    module, dot, param = weight_key.rpartition(".")
    if style == "legacy":
        return PairKeys(weight_key, f"{weight_key}_g", f"{weight_key}_v", style)
    if style == "parametrize":
        base = f"{module}{dot}{_PARAMETRIZE_MARK}{param}"
        return PairKeys(weight_key, f"{base}.original0", f"{base}.original1", style)
    raise ValueError(f"unknown key style {style!r}; use one of {', '.join(STYLES)}")


def _parametrize_weight_key(key: str) -> tuple[str, str] | None:
    """For ``<mod>.parametrizations.<name>.original0/1`` return (weight key, "g" or "v")."""
    for suffix, role in ((".original0", "g"), (".original1", "v")):
        if not key.endswith(suffix):
            continue
        head = key[: -len(suffix)]  # <mod>.parametrizations.<name>
        module_part, mark, param = head.rpartition(_PARAMETRIZE_MARK)
        if not mark or not param or "." in param:
            return None
        if module_part and not module_part.endswith("."):
            return None  # e.g. "fooparametrizations.weight"
        return f"{module_part}{param}", role
    return None


def find_pair_keys(keys: Iterable[str]) -> list[PairKeys]:
    """Every weight-norm pair among ``keys``, in the order their first key appears.

    A ``g`` without its ``v`` (or the reverse) is not a pair and is left as a plain tensor.
    """
    keys = list(keys)
    present = set(keys)
    pairs: dict[str, PairKeys] = {}
    for key in keys:
        parsed = _parametrize_weight_key(key)
        if parsed is not None:
            weight_key, _ = parsed
            candidate = pair_keys(weight_key, "parametrize")
        elif key.endswith(("_g", "_v")) and len(key) > 2:
            candidate = pair_keys(key[:-2], "legacy")
        else:
            continue
        if candidate.g_key not in present or candidate.v_key not in present:
            continue
        known = pairs.get(candidate.weight_key)
        if known is None:
            pairs[candidate.weight_key] = candidate
        elif known != candidate:
            raise InputError(
                f"{candidate.weight_key!r} is stored twice, as {known.g_key}/{known.v_key} and as "
                f"{candidate.g_key}/{candidate.v_key}; the checkpoint is inconsistent (remove one "
                "pair)"
            )
    return list(pairs.values())


def restyle_key_map(pairs: Iterable[PairKeys], style: Style) -> dict[str, str]:
    """Old key -> new key for moving ``pairs`` to ``style`` (keys already in it map to
    themselves)."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        target = pair_keys(pair.weight_key, style)
        mapping[pair.g_key] = target.g_key
        mapping[pair.v_key] = target.v_key
    return mapping


def detect_key_prefix(candidate_names: Iterable[str],
                      reference_names: Iterable[str]) -> tuple[str, str] | None:
    """The ``(strip, add)`` prefix change that makes the most candidate names match reference
    names, or None when names match best as they are.

    A candidate name ``strip + rest`` matches reference ``add + rest``. Wrappers add or drop a
    common module prefix (``m.``, ``model.``, ``module.`` from DataParallel), so only prefixes
    of one or two dotted components shared by at least half of one side's names are tried.
    """
    cands, refs = list(dict.fromkeys(candidate_names)), set(reference_names)
    if not cands or not refs:
        return None

    def common_prefixes(names: Iterable[str], total: int) -> list[str]:
        counts: dict[str, int] = {}
        for name in names:
            parts = name.split(".")
            for depth in (1, 2):
                if len(parts) > depth:
                    prefix = ".".join(parts[:depth]) + "."
                    counts[prefix] = counts.get(prefix, 0) + 1
        return [""] + sorted(p for p, n in counts.items() if 2 * n >= total)

    def matches(strip: str, add: str) -> int:
        return sum(1 for name in cands
                   if name.startswith(strip) and add + name[len(strip):] in refs)

    best, best_count = ("", ""), matches("", "")
    for strip in common_prefixes(cands, len(cands)):
        for add in common_prefixes(refs, len(refs)):
            if strip == add:
                continue
            count = matches(strip, add)
            if count > best_count:
                best, best_count = (strip, add), count
    return None if best == ("", "") else best


@dataclass(frozen=True)
class PrefixChange:
    """Rename ``strip + rest`` to ``add + rest``. Keys that do not start with ``strip`` are not
    part of the renamed view (e.g. a Lightning checkpoint's ``loss.*`` next to ``model.*``)."""

    strip: str = ""
    add: str = ""

    def __bool__(self) -> bool:
        return bool(self.strip or self.add)

    def apply(self, key: str) -> str | None:
        """The new name of ``key``, or None when it lacks the ``strip`` prefix."""
        if not key.startswith(self.strip):
            return None
        return self.add + key[len(self.strip):]

    def describe(self) -> str:
        if self.strip and self.add:
            return f"prefix {self.strip!r} replaced by {self.add!r}"
        return f"prefix {self.strip!r} removed" if self.strip else f"prefix {self.add!r} added"

    def note(self, keys: Iterable[str], *, why: str) -> str:
        """One line for the user: ``why``, the change, and the ``keys`` it leaves out."""
        left_out = [k for k in keys if self.apply(k) is None]
        text = f"{why}: {self.describe()}"
        if left_out:
            shown = ", ".join(left_out[:3]) + (f", ... {len(left_out) - 3} more"
                                               if len(left_out) > 3 else "")
            text += f"; {len(left_out)} key(s) without it left out ({shown})"
        return text


def rename_keys(keys: Iterable[str], change: PrefixChange) -> dict[str, str]:
    """``{new: old}`` for every key ``change`` keeps (one prefix swapped for another on the kept
    keys cannot make two of them collide)."""
    renamed: dict[str, str] = {}
    for key in keys:
        new = change.apply(key)
        if new is not None:
            renamed[new] = key
    if not renamed:
        raise InputError(f"{change.describe()}: no key starts with {change.strip!r}; check the "
                         "prefix (wnconvert inspect lists the keys)")
    return renamed


def prefix_to_match(source_keys: Iterable[str],
                    target_keys: Iterable[str]) -> PrefixChange | None:
    """The prefix change under which ``source_keys`` supply every one of ``target_keys`` that
    they lack as they are, or None (no change helps, or none is needed)."""
    source, target = list(source_keys), list(target_keys)
    found = detect_key_prefix(source, target)
    if found is None:
        return None
    change = PrefixChange(*found)
    renamed = {change.apply(k) for k in source} - {None}
    return change if len(set(target) & renamed) > len(set(target) & set(source)) else None


# --------------------------------------------------------------------------- spectral norm


@dataclass(frozen=True)
class SpectralKeys:
    """Where one spectral-normed parameter lives in a state dict.

    * ``legacy`` (``torch.nn.utils.spectral_norm``): ``<w>_orig``, ``<w>_u``, ``<w>_v``.
      Checkpoints written before ``weight_v`` existed store ``<w>_orig``, ``<w>_u`` and the
      normalized ``<w>`` itself: ``v_key`` is None and ``stored_key`` names that weight.
    * ``parametrize`` (``torch.nn.utils.parametrizations.spectral_norm``):
      ``<mod>.parametrizations.<name>.original``, ``.0._u`` and ``.0._v``.

    ``weight_key`` is the key the plain (folded) parameter has: ``<mod>.<name>``.
    """

    weight_key: str
    orig_key: str
    u_key: str
    v_key: str | None
    style: Style
    stored_key: str | None = None

    @property
    def members(self) -> tuple[str, ...]:
        """The keys a fold replaces by ``weight_key`` (the stored weight, if any, stays)."""
        return tuple(k for k in (self.orig_key, self.u_key, self.v_key) if k is not None)


def _parametrize_head(key: str) -> str | None:
    """``<mod>.parametrizations.<name>`` for a key below it, else None."""
    module_part, mark, rest = key.rpartition(_PARAMETRIZE_MARK)
    if not mark or (module_part and not module_part.endswith(".")):
        return None
    return f"{module_part}{mark}{rest.partition('.')[0]}"


def _parametrize_spectral(key: str, present: set[str],
                          per_head: dict[str, int]) -> SpectralKeys | None:
    if not key.endswith(".original"):
        return None
    head = key[: -len(".original")]  # <mod>.parametrizations.<name>
    module_part, mark, param = head.rpartition(_PARAMETRIZE_MARK)
    if not mark or not param or "." in param or (module_part and not module_part.endswith(".")):
        return None
    u_key, v_key = f"{head}.0._u", f"{head}.0._v"
    if u_key not in present or v_key not in present or per_head.get(head) != 3:
        return None  # not spectral norm alone (a chain of parametrizations stays as it is)
    return SpectralKeys(f"{module_part}{param}", key, u_key, v_key, "parametrize")


def find_spectral_keys(keys: Iterable[str]) -> list[SpectralKeys]:
    """Every spectral-norm site among ``keys`` (both styles), in the order their first key
    appears. A legacy ``<w>_orig`` without ``<w>_u`` is not a site; one with a weight-norm
    ``<w>_g`` too is refused (the checkpoint is inconsistent). A parametrized ``<name>`` with
    more than spectral norm's three tensors (a chain) is not a site."""
    keys = list(keys)
    present = set(keys)
    per_head: dict[str, int] = {}
    for key in keys:
        head = _parametrize_head(key)
        if head is not None:
            per_head[head] = per_head.get(head, 0) + 1
    sites: list[SpectralKeys] = []
    for key in keys:
        site = _parametrize_spectral(key, present, per_head)
        if site is None and key.endswith("_orig") and len(key) > len("_orig"):
            base = key[: -len("_orig")]
            if f"{base}_u" not in present:
                continue
            if f"{base}_g" in present:
                raise InputError(f"{base!r} is stored both as a weight-norm pair ({base}_g/_v) "
                                 f"and as spectral norm ({base}_orig/_u); the checkpoint is "
                                 "inconsistent (remove one)")
            if f"{base}_v" in present:
                site = SpectralKeys(base, key, f"{base}_u", f"{base}_v", "legacy")
            elif base in present:
                site = SpectralKeys(base, key, f"{base}_u", None, "legacy", stored_key=base)
        if site is not None:
            sites.append(site)
    return sites
