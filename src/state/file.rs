//! The checkpoint file: its frame, the data directory and its lock, atomic writes with
//! a previous generation kept, and loading that never stops the daemon.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::Checkpoint;

/// The first 8 bytes of every checkpoint file.
pub const MAGIC: &[u8; 8] = b"SLOXCKPT";
/// The checkpoint format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The newest checkpoint.
pub const CURRENT: &str = "checkpoint.pb";
/// The generation before it, kept as a fallback.
pub const PREVIOUS: &str = "checkpoint.pb.prev";
/// Where a checkpoint is written before it is renamed into place.
pub const TEMPORARY: &str = "checkpoint.pb.tmp";
/// The lock file that keeps two daemons off one data directory.
pub const LOCK: &str = "sloxide.lock";

const HEADER: usize = 8 + 4 + 8;
const TRAILER: usize = 4;

/// Why the data directory cannot be used. The OS errors are part of the messages, not
/// their sources, so that a caller printing the whole chain does not print them twice.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It does not exist and cannot be created.
    #[error("state.data_dir {dir}: cannot create it: {error}")]
    Create {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// Files cannot be written in it.
    #[error("state.data_dir {dir}: cannot write in it: {error}")]
    NotWritable {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// Another daemon holds its lock.
    #[error(
        "state.data_dir {dir} is in use by another sloxide (it holds {lock}); give each daemon its own data_dir"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A checkpoint exists but cannot be read (permissions, an I/O error): the start
    /// stops rather than move an intact file aside or overwrite it.
    #[error("state.data_dir: cannot read {file}: {message}; fix its permissions or move it away")]
    Read {
        /// The file.
        file: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The lock could not be taken for another reason.
    #[error("state.data_dir {dir}: cannot lock {lock}: {error}")]
    Lock {
        /// The directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The OS error.
        error: io::Error,
    },
}

/// Why a checkpoint file was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// It does not start with [`MAGIC`].
    #[error("not a sloxide checkpoint (its first bytes are not {MAGIC:?})")]
    Magic,
    /// Shorter (or longer) than its frame says.
    #[error("truncated or padded: {found} bytes where its frame says {expected}")]
    Length {
        /// Bytes in the file.
        found: u64,
        /// Bytes the frame says it has.
        expected: u64,
    },
    /// The bytes do not match the checksum.
    #[error("checksum mismatch: the file says {stored:08x}, its bytes give {computed:08x}")]
    Checksum {
        /// The stored CRC-32.
        stored: u32,
        /// The CRC-32 of the bytes.
        computed: u32,
    },
    /// A format newer than this build reads.
    #[error(
        "written by sloxide {writer} in checkpoint format {version}; this sloxide ({ours}) reads format {FORMAT_VERSION} and older",
        ours = env!("CARGO_PKG_VERSION")
    )]
    Version {
        /// The file's format version.
        version: u32,
        /// The sloxide version that wrote it, as far as it can be read.
        writer: String,
    },
    /// The checksum holds but the message does not decode.
    #[error("the message does not decode: {0}")]
    Decode(String),
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Io(String),
}

impl Unreadable {
    /// The `reason` label under which a refused file is counted.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Magic => "magic",
            Self::Length { .. } => "truncated",
            Self::Checksum { .. } => "checksum",
            Self::Version { .. } => "version",
            Self::Decode(_) => "decode",
            Self::Io(_) => "io",
        }
    }
}

/// Every `reason` label of [`Unreadable::reason`], for exposition.
pub const UNREADABLE_REASONS: [&str; 7] = [
    "empty",
    "magic",
    "truncated",
    "checksum",
    "version",
    "decode",
    "io",
];

/// A checkpoint framed for the disk.
pub fn encode(checkpoint: &Checkpoint) -> Vec<u8> {
    let len = checkpoint.encoded_len();
    let mut out = Vec::with_capacity(HEADER + len + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    checkpoint
        .encode(&mut out)
        .expect("a Vec grows to whatever the message needs");
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The checkpoint in `bytes`, after its frame and checksum are checked.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, Unreadable> {
    if bytes.is_empty() {
        return Err(Unreadable::Empty);
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Unreadable::Magic);
    }
    if bytes.len() < HEADER + TRAILER {
        return Err(Unreadable::Length {
            found: bytes.len() as u64,
            expected: (HEADER + TRAILER) as u64,
        });
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let expected = len.saturating_add((HEADER + TRAILER) as u64);
    if bytes.len() as u64 != expected {
        return Err(Unreadable::Length {
            found: bytes.len() as u64,
            expected,
        });
    }
    let body_end = bytes.len() - TRAILER;
    let stored = word(body_end);
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        return Err(Unreadable::Checksum { stored, computed });
    }
    let message = &bytes[HEADER..body_end];
    if version > FORMAT_VERSION {
        // Newer formats keep the header's first fields; read what can be read.
        let writer = Checkpoint::decode(message)
            .ok()
            .and_then(|c| c.header)
            .map_or_else(|| "unknown".to_owned(), |h| h.sloxide_version);
        return Err(Unreadable::Version { version, writer });
    }
    Checkpoint::decode(message).map_err(|e| Unreadable::Decode(e.to_string()))
}

/// Reads and decodes the checkpoint at `path`; `Ok(None)` when there is no file.
pub fn read(path: &Path) -> Result<Option<Checkpoint>, Unreadable> {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Unreadable::Io(e.to_string())),
    }
}

/// Which generation a checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// The newest file.
    Current,
    /// The fallback, one interval older.
    Previous,
}

impl Generation {
    /// Its file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Current => CURRENT,
            Self::Previous => PREVIOUS,
        }
    }
}

/// A file that was refused at start, and where it was moved.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The file as it was found.
    pub file: PathBuf,
    /// Why it was refused.
    pub why: Unreadable,
    /// Where it was moved aside to (`None` if the move failed too).
    pub moved_to: Option<PathBuf>,
}

/// What loading found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The checkpoint to restore, and which generation it is.
    pub checkpoint: Option<(Checkpoint, Generation)>,
    /// The files refused on the way, in the order tried.
    pub refused: Vec<Refused>,
}

/// The data directory, locked for this process for as long as the value lives.
#[derive(Debug)]
pub struct DataDir {
    dir: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `dir` if needed and checks that files can be written in it, without
    /// taking its lock (`sloxide check`).
    pub fn check(dir: &Path) -> Result<(), StateError> {
        fs::create_dir_all(dir).map_err(|error| StateError::Create {
            dir: dir.to_owned(),
            error,
        })?;
        let probe = dir.join(".sloxide-write-probe");
        let written = File::create(&probe)
            .and_then(|mut f| f.write_all(b"probe").and_then(|()| f.sync_all()));
        let _ = fs::remove_file(&probe);
        written.map_err(|error| StateError::NotWritable {
            dir: dir.to_owned(),
            error,
        })
    }

    /// Opens `dir`: creates it if needed, checks that it is writable, and takes its
    /// lock, refusing when another daemon holds it.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        Self::check(dir)?;
        let lock = dir.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|error| StateError::Lock {
                dir: dir.to_owned(),
                lock: lock.clone(),
                error,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    dir: dir.to_owned(),
                    lock,
                });
            }
            Err(fs::TryLockError::Error(error)) => {
                return Err(StateError::Lock {
                    dir: dir.to_owned(),
                    lock,
                    error,
                });
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            _lock: file,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads the newest checkpoint that can be read: the current file, else the
    /// previous generation. A damaged file (empty, truncated, corrupt, undecodable, a
    /// newer format) is moved aside to `checkpoint.corrupt-<unix_secs>` and reported;
    /// no file is fine (a first start). A file that cannot be read at all (permissions,
    /// I/O) is an error: it may well be intact.
    pub fn load(&self, unix_secs: u64) -> Result<Loaded, StateError> {
        let mut loaded = Loaded::default();
        for generation in [Generation::Current, Generation::Previous] {
            let file = self.dir.join(generation.file_name());
            match read(&file) {
                Ok(None) => {}
                Ok(Some(checkpoint)) => {
                    loaded.checkpoint = Some((checkpoint, generation));
                    return Ok(loaded);
                }
                Err(Unreadable::Io(message)) => return Err(StateError::Read { file, message }),
                Err(why) => {
                    let moved_to = self.quarantine(&file, unix_secs);
                    loaded.refused.push(Refused {
                        file,
                        why,
                        moved_to,
                    });
                }
            }
        }
        Ok(loaded)
    }

    /// Moves a refused file aside, to a name no later write or load uses.
    fn quarantine(&self, file: &Path, unix_secs: u64) -> Option<PathBuf> {
        (0..100).find_map(|n| {
            let name = match n {
                0 => format!("checkpoint.corrupt-{unix_secs}"),
                n => format!("checkpoint.corrupt-{unix_secs}.{n}"),
            };
            let to = self.dir.join(name);
            if to.exists() {
                return None;
            }
            fs::rename(file, &to).ok().map(|()| to)
        })
    }

    /// Writes `bytes` (an [`encode`]d checkpoint) atomically: to a temporary file,
    /// synced, then the current file becomes the previous generation, the temporary
    /// file becomes the current one, and the directory is synced. A crash at any point
    /// leaves the current or the previous generation whole.
    pub fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let temporary = self.dir.join(TEMPORARY);
        let current = self.dir.join(CURRENT);
        {
            let mut f = File::create(&temporary)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        match fs::rename(&current, self.dir.join(PREVIOUS)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::rename(&temporary, &current)?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::proto::Header;

    fn sample() -> Checkpoint {
        Checkpoint {
            header: Some(Header {
                format_version: FORMAT_VERSION,
                sloxide_version: "9.9.9".into(),
                written_unix_nanos: 1,
                clean_shutdown: true,
                ..Header::default()
            }),
            clamped: 7,
            ..Checkpoint::default()
        }
    }

    #[test]
    fn a_frame_reads_back_and_every_damage_is_named() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes).unwrap(), sample());
        assert_eq!(decode(&[]), Err(Unreadable::Empty));
        assert_eq!(decode(b"not a checkpoint at all"), Err(Unreadable::Magic));
        let cut = &bytes[..bytes.len() - 3];
        assert!(matches!(decode(cut), Err(Unreadable::Length { .. })));
        for at in [MAGIC.len() + 1, HEADER + 2, bytes.len() - 1] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(
                matches!(
                    decode(&flipped),
                    Err(Unreadable::Checksum { .. } | Unreadable::Length { .. })
                ),
                "flip at {at}: {:?}",
                decode(&flipped)
            );
        }
        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let end = newer.len() - TRAILER;
        let crc = crc32fast::hash(&newer[..end]);
        newer[end..].copy_from_slice(&crc.to_le_bytes());
        let refused = decode(&newer).unwrap_err();
        assert_eq!(
            refused,
            Unreadable::Version {
                version: FORMAT_VERSION + 1,
                writer: "9.9.9".into()
            }
        );
        assert!(refused.to_string().contains("written by sloxide 9.9.9"));
    }

    #[test]
    fn writes_keep_the_previous_generation_and_loads_fall_back_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert!(
            dir.load(1).unwrap().checkpoint.is_none(),
            "a first start finds nothing"
        );
        let mut first = sample();
        first.clamped = 1;
        dir.write(&encode(&first)).unwrap();
        let mut second = sample();
        second.clamped = 2;
        dir.write(&encode(&second)).unwrap();
        let (got, generation) = dir.load(2).unwrap().checkpoint.unwrap();
        assert_eq!((got.clamped, generation), (2, Generation::Current));
        // A torn current file: the previous generation is used, the bad one moved.
        fs::write(tmp.path().join(CURRENT), b"SLOXCKPT\x01").unwrap();
        let loaded = dir.load(3).unwrap();
        let (got, generation) = loaded.checkpoint.unwrap();
        assert_eq!((got.clamped, generation), (1, Generation::Previous));
        assert_eq!(loaded.refused.len(), 1);
        assert_eq!(
            loaded.refused[0].moved_to.as_deref(),
            Some(tmp.path().join("checkpoint.corrupt-3").as_path())
        );
        assert!(!tmp.path().join(CURRENT).exists());
        // A second daemon cannot take the directory.
        assert!(matches!(
            DataDir::open(tmp.path()),
            Err(StateError::Locked { .. })
        ));
        drop(dir);
        assert!(
            DataDir::open(tmp.path()).is_ok(),
            "the lock goes with the process"
        );
    }
}
