//! The data directory and its header file.
//!
//! ```text
//! <data dir>/
//!   kabar-header.json         profile names and kinds, KDF salt and parameters, wrapped keys
//!   profiles/<name>.redb      one encrypted database per profile
//!   removed/<name>-<t>.redb   databases of removed profiles (`kabar profile remove`)
//! ```
//!
//! The header holds no secret in the clear: each profile's random 256-bit data
//! key is wrapped with XChaCha20-Poly1305 under a key-encryption key derived
//! from the passphrase with Argon2id. Changing the passphrase rewraps the data
//! keys; the databases are untouched.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use kabar_crypto::ProfileKind;
use kabar_crypto::primitives::{XNONCE_LEN, xchacha_open, xchacha_seal};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::check::ProfileReport;
use crate::error::StoreError;
use crate::seal::random_bytes;
use crate::store::ProfileStore;

/// File name of the header inside a data directory.
pub const HEADER_FILE: &str = "kabar-header.json";
/// Subdirectory holding the profile databases.
pub const PROFILES_DIR: &str = "profiles";
/// Subdirectory where removed profiles' databases are moved.
pub const REMOVED_DIR: &str = "removed";
const HEADER_FORMAT: &str = "kabar-data-dir";
const HEADER_VERSION: u32 = 1;
const VERIFIER_AAD: &[u8] = b"KABAR-VERIFIER-V1";
const WRAP_AAD: &[u8] = b"KABAR-WRAP-V1\x00";

/// Argon2id cost parameters, stored in the header beside the salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// Real-use default: 64 MiB, 3 iterations, 1 lane (about a quarter of a
    /// second on a 2-core machine). Memory-hard enough that guessing a weak
    /// passphrase offline costs real hardware.
    pub const DEFAULT: KdfParams = KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 };

    /// Cheap setting for local test networks and tests ONLY: 64 KiB, 1
    /// iteration. It protects nothing against an offline guesser.
    pub const TESTNET: KdfParams = KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1 };

    /// Smallest and largest memory cost accepted, in KiB: 64 KiB (the test
    /// setting) to 4 GiB.
    pub const M_COST_KIB: std::ops::RangeInclusive<u32> = 64..=4 * 1024 * 1024;
    /// Iterations accepted: 1 to 16.
    pub const T_COST: std::ops::RangeInclusive<u32> = 1..=16;
    /// Lanes accepted: 1 to 16.
    pub const P_COST: std::ops::RangeInclusive<u32> = 1..=16;

    /// Checks every parameter against its documented range, so a damaged or
    /// hostile header fails at once instead of hanging the start (a t_cost
    /// of 2^32 − 1 would run for ever) or exhausting memory.
    pub fn check(&self) -> Result<(), String> {
        let bad = |name: &str, value: u32, range: &std::ops::RangeInclusive<u32>| {
            format!("Argon2 {name} {value} is outside {}..={}", range.start(), range.end())
        };
        if !Self::M_COST_KIB.contains(&self.m_cost_kib) {
            return Err(bad("m_cost_kib", self.m_cost_kib, &Self::M_COST_KIB));
        }
        if !Self::T_COST.contains(&self.t_cost) {
            return Err(bad("t_cost", self.t_cost, &Self::T_COST));
        }
        if !Self::P_COST.contains(&self.p_cost) {
            return Err(bad("p_cost", self.p_cost, &Self::P_COST));
        }
        Ok(())
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        self.check().map_err(StoreError::Invalid)?;
        let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| StoreError::Invalid(format!("bad Argon2 parameters: {e}")))?;
        let mut kek = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, salt, kek.as_mut())
            .map_err(|e| StoreError::Invalid(format!("Argon2 failed: {e}")))?;
        Ok(kek)
    }
}

/// One profile as the header lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileEntry {
    /// Profile name (validated: `[a-z][a-z0-9_-]{0,31}`).
    pub name: String,
    /// Personal or business.
    pub kind: ProfileKind,
    /// Database path relative to the data directory.
    pub file: String,
    /// `nonce (24) ‖ XChaCha20-Poly1305(KEK, data key)`, hex.
    wrapped_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeaderFile {
    format: String,
    version: u32,
    kdf: KdfParams,
    /// Argon2id salt, hex (16 bytes).
    salt: String,
    /// Seal of an empty message under the KEK: tells a wrong passphrase apart.
    verifier: String,
    profiles: Vec<ProfileEntry>,
}

/// A data directory: its header, and the key-encryption key once unlocked.
pub struct DataDir {
    root: PathBuf,
    header: HeaderFile,
    kek: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir").field("root", &self.root).field("profiles", &self.header.profiles).finish()
    }
}

/// Checks a profile name: 1–32 characters `[a-z0-9_-]`, starting with a letter.
pub fn validate_profile_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok { Ok(()) } else { Err(StoreError::InvalidProfileName(name.to_string())) }
}

fn seal_with_kek(kek: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<String, StoreError> {
    let mut nonce = [0u8; XNONCE_LEN];
    random_bytes(&mut nonce)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&xchacha_seal(kek, &nonce, aad, plaintext));
    Ok(kabar_crypto::hex::encode(&out))
}

fn open_with_kek(kek: &[u8; 32], aad: &[u8], hex: &str) -> Option<Zeroizing<Vec<u8>>> {
    let bytes = kabar_crypto::hex::decode(hex)?;
    if bytes.len() < XNONCE_LEN {
        return None;
    }
    let mut nonce = [0u8; XNONCE_LEN];
    nonce.copy_from_slice(&bytes[..XNONCE_LEN]);
    xchacha_open(kek, &nonce, aad, &bytes[XNONCE_LEN..]).ok().map(Zeroizing::new)
}

fn wrap_aad(name: &str) -> Vec<u8> {
    [WRAP_AAD, name.as_bytes()].concat()
}

impl DataDir {
    /// Creates a new, empty data directory at `root` (made if missing) locked
    /// by `passphrase`. Fails if one already exists there.
    pub fn create(root: &Path, passphrase: &[u8], kdf: KdfParams) -> Result<Self, StoreError> {
        kdf.check().map_err(StoreError::Invalid)?;
        let header_path = root.join(HEADER_FILE);
        if header_path.exists() {
            return Err(StoreError::DataDirExists(root.to_path_buf()));
        }
        fs::create_dir_all(root.join(PROFILES_DIR))
            .map_err(|e| StoreError::io(format!("creating {}", root.display()), e))?;
        restrict_dir(root)?;
        restrict_dir(&root.join(PROFILES_DIR))?;
        let mut salt = [0u8; 16];
        random_bytes(&mut salt)?;
        let kek = kdf.derive(passphrase, &salt)?;
        let header = HeaderFile {
            format: HEADER_FORMAT.to_string(),
            version: HEADER_VERSION,
            kdf,
            salt: kabar_crypto::hex::encode(&salt),
            verifier: seal_with_kek(&kek, VERIFIER_AAD, &[])?,
            profiles: Vec::new(),
        };
        let dir = DataDir { root: root.to_path_buf(), header, kek };
        dir.write_header()?;
        Ok(dir)
    }

    /// Opens and unlocks an existing data directory.
    pub fn open(root: &Path, passphrase: &[u8]) -> Result<Self, StoreError> {
        let header = read_header(root)?;
        let salt = kabar_crypto::hex::decode(&header.salt).ok_or_else(|| bad_header(root, "salt is not hex"))?;
        let kek = header.kdf.derive(passphrase, &salt)?;
        if open_with_kek(&kek, VERIFIER_AAD, &header.verifier).is_none() {
            return Err(StoreError::WrongPassphrase);
        }
        // A directory made by an older build (or copied with another umask):
        // owner only, as new ones are.
        restrict_dir(root)?;
        restrict_dir(&root.join(PROFILES_DIR))?;
        private_file(&root.join(HEADER_FILE))?;
        for entry in &header.profiles {
            let file = root.join(&entry.file);
            if file.exists() {
                private_file(&file)?;
            }
        }
        Ok(DataDir { root: root.to_path_buf(), header, kek })
    }

    /// The profiles of this directory, without unlocking it.
    pub fn list_profiles(root: &Path) -> Result<Vec<ProfileEntry>, StoreError> {
        Ok(read_header(root)?.profiles)
    }

    /// The directory's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The profiles, in creation order.
    pub fn profiles(&self) -> &[ProfileEntry] {
        &self.header.profiles
    }

    /// Creates profile `name` of `kind`: a new database with a new identity,
    /// signed prekey and one-time prekeys, and a new data key wrapped into the
    /// header. `now` is Unix seconds.
    pub fn create_profile<R: CryptoRng + ?Sized>(
        &mut self,
        name: &str,
        kind: ProfileKind,
        now: u64,
        rng: &mut R,
    ) -> Result<ProfileStore, StoreError> {
        validate_profile_name(name)?;
        if self.header.profiles.iter().any(|p| p.name == name) {
            return Err(StoreError::DuplicateProfile(name.to_string()));
        }
        let file = format!("{PROFILES_DIR}/{name}.redb");
        let path = self.root.join(&file);
        if path.exists() {
            return Err(StoreError::Invalid(format!(
                "{} exists but is not in the header; move it away first",
                path.display()
            )));
        }
        let mut data_key = Zeroizing::new([0u8; 32]);
        random_bytes(data_key.as_mut())?;
        let store = ProfileStore::create(&path, name, kind, &data_key, now, rng)?;
        self.header.profiles.push(ProfileEntry {
            name: name.to_string(),
            kind,
            file,
            wrapped_key: seal_with_kek(&self.kek, &wrap_aad(name), data_key.as_ref())?,
        });
        if let Err(e) = self.write_header() {
            self.header.profiles.pop();
            drop(store);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(store)
    }

    /// A profile's entry and its data key.
    fn profile_key(&self, name: &str) -> Result<(&ProfileEntry, Zeroizing<[u8; 32]>), StoreError> {
        let entry = self
            .header
            .profiles
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| StoreError::UnknownProfile(name.to_string()))?;
        let key = open_with_kek(&self.kek, &wrap_aad(name), &entry.wrapped_key)
            .ok_or_else(|| bad_header(&self.root, "a wrapped profile key does not open (header tampered?)"))?;
        let data_key: [u8; 32] =
            key.as_slice().try_into().map_err(|_| bad_header(&self.root, "a wrapped key has the wrong length"))?;
        Ok((entry, Zeroizing::new(data_key)))
    }

    /// Opens profile `name`. Its file is verified first without writing to
    /// it: a damaged file is refused, unchanged.
    pub fn open_profile(&self, name: &str) -> Result<ProfileStore, StoreError> {
        let (entry, data_key) = self.profile_key(name)?;
        ProfileStore::open(&self.root.join(&entry.file), &entry.name, entry.kind, &data_key)
    }

    /// Opens every profile, in creation order, for a node start: ALL are
    /// verified (every page's checksum, the schema and key check, a
    /// migration in memory, every record the node reads at start) before
    /// ANY file is written, so a start refused
    /// because one profile is damaged changes no byte of any file. Then each
    /// is opened (and migrated) for real.
    pub fn open_profiles(&self) -> Result<Vec<ProfileStore>, StoreError> {
        for entry in &self.header.profiles {
            let (entry, data_key) = self.profile_key(&entry.name)?;
            let path = self.root.join(&entry.file);
            let store = ProfileStore::open_unwritten(&path, &entry.name, entry.kind, &data_key, true)?;
            let reads = crate::check::contained(&path, || store.verify_start_reads());
            crate::check::close(store);
            reads?;
        }
        let mut stores = Vec::with_capacity(self.header.profiles.len());
        for entry in &self.header.profiles {
            let (entry, data_key) = self.profile_key(&entry.name)?;
            stores.push(ProfileStore::open_verified(&self.root.join(&entry.file), &entry.name, entry.kind, &data_key)?);
        }
        Ok(stores)
    }

    /// Checks profile `name` without writing to any file (`kabar store
    /// check`): redb's integrity check, then every row of every table read
    /// and every record opened ([`crate::check`]). Damage is in the report;
    /// an error means the check could not run (the file is in use, a newer
    /// schema, an I/O error).
    pub fn check_profile(&self, name: &str) -> Result<ProfileReport, StoreError> {
        let path = self.root.join(format!("{PROFILES_DIR}/{name}.redb"));
        let (entry, data_key) = match self.profile_key(name) {
            Ok(found) => found,
            Err(e) if e.is_damage() => return Ok(ProfileReport::unreadable(name, &path, &e)),
            Err(e) => return Err(e),
        };
        let path = self.root.join(&entry.file);
        let open = |verify| ProfileStore::open_unwritten(&path, &entry.name, entry.kind, &data_key, verify);
        let damage = match open(true) {
            Ok(store) => {
                let report = crate::check::check_store(&store, None);
                crate::check::close(store);
                return Ok(report);
            }
            Err(e) if e.is_damage() => e,
            Err(e) => return Err(e),
        };
        // The file does not verify: read what can still be read without
        // the integrity check, to say where the damage shows.
        Ok(match open(false) {
            Ok(store) => {
                let report = crate::check::check_store(&store, Some(&damage));
                crate::check::close(store);
                report
            }
            Err(_) => ProfileReport::unreadable(name, &path, &damage),
        })
    }

    /// Removes profile `name` (the node must be stopped): its database file
    /// moves to `removed/<name>-<now>.redb` in the data directory, then its
    /// entry (and data key) leaves the header. The moved file can only be
    /// read again with a copy of the header made before. Returns where the
    /// file went (`None` if it was missing). `now` is Unix seconds.
    pub fn remove_profile(&mut self, name: &str, now: u64) -> Result<Option<PathBuf>, StoreError> {
        let index = self
            .header
            .profiles
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| StoreError::UnknownProfile(name.to_string()))?;
        let file = self.root.join(&self.header.profiles[index].file);
        let moved = if file.exists() {
            let removed = self.root.join(REMOVED_DIR);
            fs::create_dir_all(&removed).map_err(|e| StoreError::io(format!("creating {}", removed.display()), e))?;
            restrict_dir(&removed)?;
            let mut to = removed.join(format!("{name}-{now}.redb"));
            for n in 2.. {
                if !to.exists() {
                    break;
                }
                to = removed.join(format!("{name}-{now}-{n}.redb"));
            }
            fs::rename(&file, &to)
                .map_err(|e| StoreError::io(format!("moving {} to {}", file.display(), to.display()), e))?;
            Some(to)
        } else {
            None
        };
        let entry = self.header.profiles.remove(index);
        if let Err(e) = self.write_header() {
            self.header.profiles.insert(index, entry);
            if let Some(to) = &moved {
                let _ = fs::rename(to, &file);
            }
            return Err(e);
        }
        Ok(moved)
    }

    /// Changes the passphrase: a new salt and key-encryption key, every data
    /// key rewrapped, the header replaced atomically. Databases are untouched.
    pub fn change_passphrase(&mut self, new_passphrase: &[u8], kdf: KdfParams) -> Result<(), StoreError> {
        let mut salt = [0u8; 16];
        random_bytes(&mut salt)?;
        let new_kek = kdf.derive(new_passphrase, &salt)?;
        let mut header = self.header.clone();
        for entry in &mut header.profiles {
            let key = open_with_kek(&self.kek, &wrap_aad(&entry.name), &entry.wrapped_key)
                .ok_or_else(|| bad_header(&self.root, "a wrapped profile key does not open"))?;
            entry.wrapped_key = seal_with_kek(&new_kek, &wrap_aad(&entry.name), &key)?;
        }
        header.kdf = kdf;
        header.salt = kabar_crypto::hex::encode(&salt);
        header.verifier = seal_with_kek(&new_kek, VERIFIER_AAD, &[])?;
        let old = std::mem::replace(&mut self.header, header);
        if let Err(e) = self.write_header() {
            self.header = old;
            return Err(e);
        }
        self.kek = new_kek;
        Ok(())
    }

    /// Writes the header atomically: temporary file, fsync, rename, fsync dir.
    fn write_header(&self) -> Result<(), StoreError> {
        let path = self.root.join(HEADER_FILE);
        let tmp = self.root.join(format!("{HEADER_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(&self.header)
            .map_err(|e| StoreError::Database(format!("encoding the header: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut file = create_private(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.root)?.sync_all()
        };
        write().map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
    }
}

fn bad_header(root: &Path, reason: &str) -> StoreError {
    StoreError::BadHeader { path: root.join(HEADER_FILE), reason: reason.to_string() }
}

fn read_header(root: &Path) -> Result<HeaderFile, StoreError> {
    let path = root.join(HEADER_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NoDataDir(root.to_path_buf())),
        Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
    };
    let header: HeaderFile = serde_json::from_slice(&bytes).map_err(|e| bad_header(root, &e.to_string()))?;
    if header.format != HEADER_FORMAT {
        return Err(bad_header(root, "not a Kabar header"));
    }
    if header.version != HEADER_VERSION {
        return Err(bad_header(root, &format!("unsupported header version {}", header.version)));
    }
    header.kdf.check().map_err(|reason| bad_header(root, &reason))?;
    for entry in &header.profiles {
        validate_profile_name(&entry.name).map_err(|_| bad_header(root, "invalid profile name"))?;
        if entry.file != format!("{PROFILES_DIR}/{}.redb", entry.name) {
            return Err(bad_header(root, "profile file path does not match its name"));
        }
    }
    Ok(header)
}

#[cfg(unix)]
fn restrict_dir(root: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))
        .map_err(|e| StoreError::io(format!("setting permissions of {}", root.display()), e))
}

#[cfg(not(unix))]
fn restrict_dir(_root: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Makes `path` readable and writable by its owner only (0600), whatever
/// the umask it was created under.
#[cfg(unix)]
pub(crate) fn private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| StoreError::io(format!("setting permissions of {}", path.display()), e))
}

#[cfg(not(unix))]
pub(crate) fn private_file(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Creates (or truncates) `path` as a file only its owner can read and
/// write (0600 from its first byte, and again after creation whatever the
/// umask).
pub(crate) fn create_private(path: &Path) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}
