//! What a power cut does to what is not durable: the sector size it drops,
//! keeps or garbles, the policies for file bytes ([`DataLoss`]) and
//! directory changes ([`DirLoss`]) that make a [`CutPolicy`], and the seeded
//! generator ([`SplitMix64`]) that makes random cuts reproducible.

/// Size of the unit a power cut drops, keeps or garbles.
pub const SECTOR_LEN: u64 = 512;

/// Size of the unit the page cache keeps and drops (`StorageFile::drop_cache`):
/// Linux's page on x86-64 and, by default, arm64.
pub const PAGE_LEN: u64 = 4096;

/// A small seeded generator (splitmix64): reproducible power cuts without a
/// dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); the bias of the modulo is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "empty range");
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// What a power cut does to file bytes not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLoss {
    /// Every unsynced sector is lost (the disk wrote nothing).
    DropAll,
    /// Every unsynced sector made it (the disk wrote everything, but the sync
    /// never returned).
    KeepAll,
    /// Each unsynced sector piece is dropped, kept or garbled (one in three
    /// each), and each unsynced size change is kept or dropped.
    Random,
}

/// What a power cut does to directory changes not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirLoss {
    /// All forgotten.
    ForgetAll,
    /// All kept (a file system that happened to commit its metadata).
    KeepAll,
    /// A random prefix of each directory's changes is kept, in order (a
    /// metadata journal that committed some of them).
    RandomPrefix,
}

/// How [`SimStorage::power_cut_with`](super::SimStorage::power_cut_with)
/// treats what is not durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutPolicy {
    pub data: DataLoss,
    pub dirs: DirLoss,
}

impl CutPolicy {
    /// The default cut: random sectors, unsynced directory changes forgotten.
    pub const RANDOM: CutPolicy = CutPolicy {
        data: DataLoss::Random,
        dirs: DirLoss::ForgetAll,
    };
    /// Nothing that was not durable survives.
    pub const KEEP_NOTHING: CutPolicy = CutPolicy {
        data: DataLoss::DropAll,
        dirs: DirLoss::ForgetAll,
    };
    /// Everything survives, as if the page cache had been written back.
    pub const KEEP_ALL: CutPolicy = CutPolicy {
        data: DataLoss::KeepAll,
        dirs: DirLoss::KeepAll,
    };
    /// Random sectors, and a seeded random prefix of each directory's
    /// changes (a file system without a journal writing blocks back in any
    /// order across directories).
    pub const RANDOM_PREFIX: CutPolicy = CutPolicy {
        data: DataLoss::Random,
        dirs: DirLoss::RandomPrefix,
    };
}
