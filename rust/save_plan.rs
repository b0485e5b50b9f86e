//! The step codes of `sessionstore._save_plan.SaveStep` and the file names of
//! `sessionstore._naming`, written once for the whole core. The extension
//! exports both as module constants, and a test checks them equal to Python's.

use std::ffi::CStr;

/// The checkpoint of the replace layout.
pub const CHECKPOINT_NAME: &CStr = c"session";
/// The file a save writes before it renames it into place.
pub const NEXT_NAME: &CStr = c"session.next";
/// The checkpoint of the slotted layout.
pub const SLOTS_NAME: &CStr = c"session.slots";

/// Every file name, by the name `_naming` gives it.
pub const FILE_NAMES: [(&str, &CStr); 3] = [
    ("CHECKPOINT_NAME", CHECKPOINT_NAME),
    ("NEXT_NAME", NEXT_NAME),
    ("SLOTS_NAME", SLOTS_NAME),
];

macro_rules! steps {
    ($($(#[$doc:meta])* $name:ident = $code:literal,)*) => {
        /// The step codes, as `SaveStep` numbers them.
        pub mod step {
            $($(#[$doc])* pub const $name: u8 = $code;)*
        }

        /// Every step code, by the name `SaveStep` gives it.
        pub const STEPS: &[(&str, u8)] = &[$((stringify!($name), $code),)*];
    };
}

steps! {
    /// open the session directory
    OPEN_DIR = 1,
    /// take its lock without waiting
    LOCK_DIR = 2,
    /// create the next file, which must not exist
    CREATE_NEXT = 3,
    /// write every byte to the next file
    WRITE_NEXT = 4,
    /// flush the next file
    FSYNC_NEXT = 5,
    /// close the next file, checked
    CLOSE_NEXT = 6,
    /// rename the next file over the target
    RENAME_NEXT = 7,
    /// flush the directory
    FSYNC_DIR = 8,
    /// close the directory, which releases the lock
    CLOSE_DIR = 9,
    /// refuse a leftover next file
    CHECK_NEXT = 10,
    /// refuse a session in the replace layout
    CHECK_REPLACE = 11,
    /// open the slots file (a rebuild when missing)
    OPEN_SLOTS = 12,
    /// read the slots and choose one (or a rebuild)
    READ_SLOTS = 13,
    /// write the record over the chosen slot
    WRITE_SLOT = 14,
    /// flush the slots file's data
    SYNC_SLOT = 15,
    /// close the slots file, checked
    CLOSE_SLOTS = 16,
    /// refuse a session directory that was removed
    CHECK_DIR_LINKED = 17,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_has_its_own_code() {
        let mut codes: Vec<u8> = STEPS.iter().map(|(_, code)| *code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), STEPS.len());
        assert_eq!(STEPS[0], ("OPEN_DIR", step::OPEN_DIR));
    }
}
