//! A session held across saves: `sessionstore._save_plan.HeldPlan` in Rust.
//!
//! `acquire` opens the session directory, takes its lock and checks what a save
//! would; each save then runs the held plan's middle steps on the descriptors
//! kept open, and `release` closes them, which releases the lock. While the lock
//! is held nobody else writes to the session, so after its first save a held
//! slotted session knows its slots: a save is an `fstat` of the directory (was
//! the session removed?), one `pwritev` and one `fdatasync`. Plain Rust,
//! without Python: the extension runs it with the GIL released.

use std::ffi::{CStr, CString};

use crate::save::{self, Checkpoint, Names, SaveError, State, Steps};
use crate::save_plan::{CHECKPOINT_NAME, NEXT_NAME, SLOTS_NAME};
use crate::slotted::run_slotted;

/// What a held session runs per save, by layout.
pub enum Plan {
    /// The replace sequence after the lock, without closing the directory.
    Replace { save: Vec<u8> },
    /// The slotted in-place steps after the lock, and the rebuild for a record
    /// that does not fit, neither closing the directory.
    Slotted { save: Vec<u8>, rebuild: Vec<u8> },
}

impl Plan {
    /// The file a save of this layout writes.
    fn target(&self) -> &'static CStr {
        match self {
            Self::Replace { .. } => CHECKPOINT_NAME,
            Self::Slotted { .. } => SLOTS_NAME,
        }
    }
}

/// A held session: its directory open and locked, its slots file open once used.
pub struct Held {
    location: CString,
    plan: Plan,
    release: Vec<u8>,
    state: State,
}

impl Held {
    /// Run `acquire` (open, lock, check); on failure nothing stays open.
    pub fn acquire(
        location: CString,
        acquire: &[u8],
        plan: Plan,
        release: Vec<u8>,
    ) -> Result<Self, SaveError> {
        let mut held = Self {
            location,
            plan,
            release,
            state: State::default(),
        };
        held.run(acquire)?;
        Ok(held)
    }

    pub fn location(&self) -> &CString {
        &self.location
    }

    /// Run `codes` that save nothing (the acquire and the release); on failure
    /// close what is open.
    fn run(&mut self, codes: &[u8]) -> Result<(), SaveError> {
        let names = Names {
            location: &self.location,
            next_name: NEXT_NAME,
            target: self.plan.target(),
        };
        let outcome = save::run(
            &names,
            &mut self.state,
            codes,
            Steps::Slotted,
            Checkpoint::of(&[]),
        );
        if outcome.is_err() {
            let _ = self.state.close();
        }
        outcome.map(drop)
    }

    /// One save on the held descriptors. A failed save leaves the session held
    /// and its last good checkpoint in place; the next save reads the slots again.
    pub fn save(&mut self, data: Checkpoint) -> Result<(), SaveError> {
        match &self.plan {
            Plan::Replace { save } => {
                let names = Names {
                    location: &self.location,
                    next_name: NEXT_NAME,
                    target: CHECKPOINT_NAME,
                };
                save::run(&names, &mut self.state, save, Steps::Replace, data).map(drop)
            }
            Plan::Slotted { save, rebuild } => {
                run_slotted(&self.location, &mut self.state, save, rebuild, data)
            }
        }
    }

    /// Run `release`, which closes the descriptors and so releases the lock.
    /// Whatever it leaves open (a failed close) is closed anyway.
    pub fn release(&mut self) -> Result<(), SaveError> {
        // Taken out to run on `self`; a held session is released once (its
        // owner drops it then), and a second release has nothing to close.
        let release = std::mem::take(&mut self.release);
        let outcome = self.run(&release);
        let _ = self.state.close();
        outcome
    }

    /// Close the descriptors without running any plan: a forked child's copy,
    /// whose closing leaves the parent's lock alone (the lock belongs to the
    /// open directory both share, and the parent's stays open).
    pub fn forget(&mut self) {
        let _ = self.state.close();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.state.close();
    }
}

/// The replace layout's `Plan` from the held plan's save codes.
pub fn replace(save: &[u8]) -> Plan {
    Plan::Replace {
        save: save.to_vec(),
    }
}

/// The slotted layout's `Plan` from the held plan's save and rebuild codes.
pub fn slotted(save: &[u8], rebuild: &[u8]) -> Plan {
    Plan::Slotted {
        save: save.to_vec(),
        rebuild: rebuild.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posix;
    use crate::save::Failure;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;

    // The codes of `plan_hold(Durability.FULL, layout)`.
    const ACQUIRE_SLOTTED: &[u8] = &[1, 2, 10, 11];
    const ACQUIRE_REPLACE: &[u8] = &[1, 2, 10];
    const SAVE_SLOTTED: &[u8] = &[12, 13, 14, 15];
    const REBUILD: &[u8] = &[3, 4, 5, 6, 7, 8];
    const SAVE_REPLACE: &[u8] = &[3, 4, 5, 6, 7, 8];
    const RELEASE_SLOTTED: &[u8] = &[16, 9];
    const RELEASE_REPLACE: &[u8] = &[9];

    use crate::test_dir::TempDir;

    fn hold_slotted(dir: &TempDir) -> Result<Held, Failure> {
        Held::acquire(
            dir.location(),
            ACQUIRE_SLOTTED,
            slotted(SAVE_SLOTTED, REBUILD),
            RELEASE_SLOTTED.to_vec(),
        )
        .map_err(|error| error.failure)
    }

    fn newest(dir: &TempDir) -> Vec<u8> {
        let path = CString::new(dir.0.join("session.slots").as_os_str().as_bytes()).unwrap();
        let fd = posix::open(&path, crate::slotted::READ_FLAGS).unwrap();
        let view = crate::slotted::read_view(&fd).unwrap();
        let slot = crate::slots_format::newest_first(&view.headers)[0];
        let length = view.headers[slot].unwrap().length as usize;
        let mut data = vec![0u8; length];
        assert!(
            unsafe { crate::slotted::read_record(&fd, &view, slot, data.as_mut_ptr()) }.unwrap()
        );
        fd.close().unwrap();
        data
    }

    #[test]
    fn a_held_slotted_session_saves_rebuilds_and_saves_in_place_again() {
        let dir = TempDir::new("held", "slotted");
        let mut held = hold_slotted(&dir).unwrap();
        for data in [
            &b"first"[..],
            b"second",
            &[7u8; 10_000],
            b"fourth",
            b"fifth",
        ] {
            held.save(Checkpoint::of(data)).unwrap();
            assert_eq!(newest(&dir), data);
        }
        held.release().unwrap();
    }

    #[test]
    fn the_lock_is_held_until_release() {
        let dir = TempDir::new("held", "lock");
        let mut held = hold_slotted(&dir).unwrap();
        assert_eq!(hold_slotted(&dir).err(), Some(Failure::Held));
        held.release().unwrap();
        hold_slotted(&dir).unwrap().release().unwrap();
    }

    #[test]
    fn a_leftover_or_the_other_layout_refuses_the_hold() {
        let dir = TempDir::new("held", "refused");
        fs::write(dir.0.join("session.next"), b"").unwrap();
        assert_eq!(hold_slotted(&dir).err(), Some(Failure::Leftover));
        fs::rename(dir.0.join("session.next"), dir.0.join("session")).unwrap();
        assert_eq!(hold_slotted(&dir).err(), Some(Failure::ReplaceLayout));
    }

    #[test]
    fn a_held_replace_session_renames_into_place_each_save() {
        let dir = TempDir::new("held", "replace");
        let mut held = Held::acquire(
            dir.location(),
            ACQUIRE_REPLACE,
            replace(SAVE_REPLACE),
            RELEASE_REPLACE.to_vec(),
        )
        .unwrap();
        for data in [&b"one"[..], b"two"] {
            held.save(Checkpoint::of(data)).unwrap();
            assert_eq!(fs::read(dir.0.join("session")).unwrap(), data);
        }
        held.release().unwrap();
        assert!(!dir.0.join("session.next").exists());
    }
}
