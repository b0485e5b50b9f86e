//! A scratch session directory for the `#[cfg(test)]` tests of every module.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A new, empty directory, removed (made writable first) when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Named after the module (`kind`), the test (`name`) and the process, so
    /// tests running at once never share one.
    pub fn new(kind: &str, name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("sessionstore-{kind}-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// The directory as the C string the writers take.
    pub fn location(&self) -> CString {
        CString::new(self.0.as_os_str().as_bytes()).unwrap()
    }

    /// The names of the entries inside it, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// `session.slots` inside it.
    pub fn slots(&self) -> PathBuf {
        self.0.join("session.slots")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o700));
        let _ = fs::remove_dir_all(&self.0);
    }
}
