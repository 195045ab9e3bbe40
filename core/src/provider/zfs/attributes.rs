//! A ZFS volume's attributes: its capacity (the filesystem's `refquota`:
//! its own data, snapshots not counted), its dataset options (`compression`,
//! `recordsize`, checked before any command) and the pool's free space.

use super::parse::stderr_of;
use super::{Cmd, ProviderConfig, ProviderError, VolumeKind, VolumeRef, ZfsProvider, parse_size};

/// ZFS `compression` values a volume may ask for.
pub const COMPRESSION_VALUES: &[&str] = &[
    "on",
    "off",
    "lz4",
    "lzjb",
    "zle",
    "gzip",
    "gzip-1",
    "gzip-2",
    "gzip-3",
    "gzip-4",
    "gzip-5",
    "gzip-6",
    "gzip-7",
    "gzip-8",
    "gzip-9",
    "zstd",
    "zstd-fast",
];

/// Checks one volume option: `compression` (one of [`COMPRESSION_VALUES`],
/// or `zstd-1`..`zstd-19`) or `recordsize` (a power of two from 512 bytes
/// to 1 MiB, bytes or with a K/M suffix).
pub fn check_volume_option(key: &str, value: &str) -> Result<(), ProviderError> {
    let bad = |why: &str| {
        Err(ProviderError::InvalidConfig(format!(
            "{key}={value:?}: {why}"
        )))
    };
    match key {
        "compression" => {
            let zstd_level = value
                .strip_prefix("zstd-")
                .and_then(|l| l.parse::<u8>().ok())
                .is_some_and(|l| (1..=19).contains(&l));
            if COMPRESSION_VALUES.contains(&value) || zstd_level {
                Ok(())
            } else {
                bad("not a ZFS compression algorithm")
            }
        }
        "recordsize" => match parse_size(value) {
            Some(n) if n.is_power_of_two() && (512..=1 << 20).contains(&n) => Ok(()),
            _ => bad("must be a power of two from 512 to 1M"),
        },
        _ => Err(ProviderError::InvalidConfig(format!(
            "the zfs provider has no volume option {key:?} (compression, recordsize)"
        ))),
    }
}

impl ZfsProvider {
    /// `zfs set refquota=BYTES` on data volume `volume`. ZFS itself refuses
    /// a `refquota` below what the dataset references ("size is less than
    /// current used or reserved space"): that is
    /// [`ProviderError::CapacityBelowUsage`], with the `referenced` bytes
    /// read after the refusal (one more command, only then).
    pub(super) fn set_refquota(
        &self,
        volume: &VolumeRef<'_>,
        bytes: u64,
    ) -> Result<(), ProviderError> {
        if volume.kind != VolumeKind::Data {
            return Err(ProviderError::Other(format!(
                "a capacity is set on data volumes, not on snapshot {}",
                volume.id
            )));
        }
        let (name, _) = self.require(volume)?;
        match Self::set_props(&name, &[format!("refquota={bytes}")]) {
            Err(e) if stderr_of(&e).contains("less than current used") => {
                Err(ProviderError::CapacityBelowUsage {
                    what: format!("data volume {}", volume.id),
                    used: Self::referenced_bytes(&name)?,
                    capacity: bytes,
                })
            }
            other => other,
        }
    }

    /// The `referenced` bytes of dataset `name`.
    fn referenced_bytes(name: &str) -> Result<u64, ProviderError> {
        Self::numeric_prop(name, "referenced")
    }

    /// The provider dataset's `available` bytes.
    pub(super) fn available_bytes(&self) -> Result<Option<u64>, ProviderError> {
        Self::numeric_prop(&self.dataset, "available").map(Some)
    }

    /// The exact values of properties `props` (comma-separated) of dataset
    /// `name`, one a line (`zfs get -Hp -o value`).
    pub(super) fn prop_values(name: &str, props: &'static str) -> Result<String, ProviderError> {
        let out = Cmd::new("zfs")
            .arg("get")
            .arg("-H")
            .arg("-p")
            .arg("-o")
            .arg("value")
            .arg(props)
            .user_arg(name)?
            .run()?;
        Ok(out.stdout_str())
    }

    /// Numeric property `prop` of dataset `name`, exact (`zfs get -Hp`).
    fn numeric_prop(name: &str, prop: &'static str) -> Result<u64, ProviderError> {
        let text = Self::prop_values(name, prop)?;
        text.trim()
            .parse::<u64>()
            .map_err(|_| ProviderError::Other(format!("zfs get {prop}: {text:?}")))
    }

    /// `zfs set` of checked options on data volume `volume`.
    pub(super) fn set_options(
        &self,
        volume: &VolumeRef<'_>,
        options: &ProviderConfig,
    ) -> Result<(), ProviderError> {
        options
            .iter()
            .try_for_each(|(k, v)| check_volume_option(k, v))?;
        if options.is_empty() {
            return Ok(());
        }
        let (name, _) = self.require(volume)?;
        let props: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Self::set_props(&name, &props)
    }
}
