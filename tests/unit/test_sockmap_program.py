"""The verdict program as bytes: the encoding the kernel's uapi defines, checked without loading.

Loading it is proved by tests/integration/test_data_plane.py (root); these pin down the parts a
verifier would accept but that would do the wrong thing: where the empty-segment jump lands,
which map the program redirects through, which helpers it calls.
"""

from __future__ import annotations

import struct

from prism.frontdoor.sockmap import insn, verdict_program

_EXIT = 0x95
_JEQ_IMM = 0x15
_CALL = 0x85
_LD_IMM64 = 0x18


def _decode(program: bytes) -> list[tuple[int, int, int, int, int]]:
    """(opcode, dst, src, offset, immediate) per 8-byte slot."""
    out = []
    for at in range(0, len(program), 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", program, at)
        out.append((code, regs & 0x0F, regs >> 4, off, imm))
    return out


def test_an_instruction_packs_registers_low_nibble_dst_high_nibble_src() -> None:
    assert insn(0xBF, 6, 1) == bytes([0xBF, 0x16, 0, 0, 0, 0, 0, 0])  # r6 = r1
    assert insn(0x07, 3, imm=-8) == bytes([0x07, 0x03, 0, 0]) + struct.pack("<i", -8)
    assert insn(_EXIT) == bytes([0x95, 0, 0, 0, 0, 0, 0, 0])


def test_an_empty_segment_jumps_to_the_exit_with_a_drop_verdict() -> None:
    slots = _decode(verdict_program(map_fd=7))
    jump = next(i for i, slot in enumerate(slots) if slot[0] == _JEQ_IMM)
    _code, dst, _src, off, imm = slots[jump]
    assert (dst, imm) == (0, 0)  # if r0 (skb->len) == 0
    assert slots[jump + 1 + off][0] == _EXIT
    assert jump + 1 + off == len(slots) - 1  # the one exit, with r0 still 0: SK_DROP


def test_the_redirect_goes_through_the_given_map_keyed_by_the_socket_cookie() -> None:
    slots = _decode(verdict_program(map_fd=7))
    loads = [slot for slot in slots if slot[0] == _LD_IMM64]
    assert loads == [(_LD_IMM64, 2, 1, 0, 7)]  # r2 = map fd 7 (BPF_PSEUDO_MAP_FD)
    calls = [slot[4] for slot in slots if slot[0] == _CALL]
    assert calls == [46, 72]  # bpf_get_socket_cookie, then bpf_sk_redirect_hash
    assert slots[-1][0] == _EXIT
