//! The table of outstanding SRBs: a fixed number of slots chosen at construction, each holding what a
//! completion needs (the caller's tag, LUN, opcode, bytes asked for). A transaction id names a slot
//! and the slot's generation, so a completion the host replays after the slot was reused, or forges,
//! matches nothing. Nothing here allocates after [`SlotTable::new`].
#![forbid(unsafe_code)]

use alloc::vec::Vec;

/// Most slots a table can have: slot numbers stay far below the reserved ids
/// (`TRANS_ID_INIT`, `TRANS_ID_RESET`) and 0 (host-initiated packets).
pub const MAX_SLOTS: usize = 1 << 16;

/// What an outstanding SRB's completion needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// The caller's tag.
    pub tag: u32,
    /// The LUN addressed.
    pub lun: u8,
    /// The CDB operation code.
    pub opcode: u8,
    /// Data bytes asked for.
    pub requested: u32,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    generation: u32,
    busy: Option<InFlight>,
}

/// Fixed-capacity slots with a free list.
#[derive(Debug, Clone)]
pub struct SlotTable {
    slots: Vec<Slot>,
    /// Free slot numbers; the last one is used next (a freed slot is reused first, with a new
    /// generation). Never longer than `slots`, so pushing never reallocates.
    free: Vec<u32>,
}

/// Transaction id of slot `index` at `generation`: generation in the high half, `index + 1` in the
/// low half (never 0, never a reserved id since `index < MAX_SLOTS`).
fn encode(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (u64::from(index) + 1)
}

/// `(index, generation)` of a transaction id, if its low half can name a slot at all.
fn decode(trans_id: u64) -> Option<(usize, u32)> {
    let low = (trans_id & 0xFFFF_FFFF) as usize;
    let index = low.checked_sub(1)?;
    Some((index, (trans_id >> 32) as u32))
}

impl SlotTable {
    /// A table of `capacity` slots, clamped to `1..=MAX_SLOTS`.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_SLOTS);
        let slots = alloc::vec![
            Slot {
                generation: 0,
                busy: None
            };
            capacity
        ];
        Self {
            slots,
            free: (0..capacity as u32).rev().collect(),
        }
    }

    /// Slots in the table (fixed).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Takes a free slot for `entry` and returns its transaction id; `None` when all are in use.
    pub fn insert(&mut self, entry: InFlight) -> Option<u64> {
        let index = self.free.pop()?;
        let slot = &mut self.slots[index as usize];
        slot.busy = Some(entry);
        Some(encode(index, slot.generation))
    }

    /// The entry `trans_id` names, if that slot is in use at that generation.
    pub fn get(&self, trans_id: u64) -> Option<&InFlight> {
        let (index, generation) = decode(trans_id)?;
        let slot = self.slots.get(index)?;
        (slot.generation == generation)
            .then_some(slot.busy.as_ref())
            .flatten()
    }

    /// Frees the slot `trans_id` names and returns its entry; `None` (and nothing changes) for an id
    /// that names no slot in use at that generation.
    pub fn remove(&mut self, trans_id: u64) -> Option<InFlight> {
        self.get(trans_id)?;
        let (index, _) = decode(trans_id)?;
        let slot = &mut self.slots[index];
        let entry = slot.busy.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index as u32);
        Some(entry)
    }
}
