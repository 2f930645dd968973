//! Config primitives shared by the LB and broker configs: human durations ("5s", "1m30s"),
//! human sizes ("64KiB"), CIDRs, and errors located as `file:line: what is wrong` so an operator
//! can jump straight to the bad line. `mqedge check` and the running servers use exactly this code.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;

/// A duration as operators write it: `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"1m30s"`, or a bare
/// integer meaning seconds. Parsed at load time so a typo is a config error, not a runtime surprise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Shorthand for a whole number of seconds, for defaults.
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
    /// Shorthand for milliseconds, for defaults.
    pub const fn millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Parses `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"1d"`, `"1m30s"` (and `"1.5s"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {s:?}: expected a number with a unit, like \"500ms\", \"5s\", \"2m\", \"1h\"")
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_end].trim();
        rest = &rest[unit_end..];
        let mult = match unit {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += n * mult;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like \"5s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(HumanDuration::secs)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(HumanDuration::secs(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte size as operators write it: `"64KiB"`, `"1MiB"`, `"10KB"`, `"512"`, or a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// Parses `"64KiB"`, `"1 MiB"`, `"1GiB"`, `"10KB"` (powers of 1000), `"512"`, `"512B"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {s:?}: expected a number with a unit, like \"64KiB\", \"1MiB\", \"512B\""
        )
    };
    let t = s.trim();
    let num_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if num_end == 0 {
        return Err(bad());
    }
    let n: u64 = t[..num_end].parse().map_err(|_| bad())?;
    let mult: u64 = match t[num_end..].trim() {
        "" | "B" | "b" => 1,
        "KiB" | "kib" | "K" | "k" => 1 << 10,
        "MiB" | "mib" | "M" | "m" => 1 << 20,
        "GiB" | "gib" | "G" | "g" => 1 << 30,
        "KB" | "kB" | "kb" => 1_000,
        "MB" | "mb" => 1_000_000,
        "GB" | "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"64KiB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ByteSize(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// An IP network like `10.0.0.0/8` or `::1/128` (a bare address means a single host), used for
/// `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network; an IPv4-mapped IPv6 address matches IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid CIDR {s:?}: expected like \"10.0.0.0/8\" or \"127.0.0.1\"");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match p {
            Some(p) => p.trim().parse().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        let addr = match addr {
            IpAddr::V4(v) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(v) & mask).into())
            }
            IpAddr::V6(v) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(v) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One config problem, pinned to a line so the operator can fix it without guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file as the operator named it.
    pub file: String,
    /// 1-based line; `None` when the problem is the file itself (unreadable).
    pub line: Option<usize>,
    /// What is wrong, in one line.
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in one config file, reported together (one per line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Located>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// 1-based line number of a byte offset in `src`.
pub fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads a config file, reporting an unreadable file in the same located form.
pub fn read_config_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![Located {
            file: path.display().to_string(),
            line: None,
            message: format!("cannot read config file: {e}"),
        }])
    })
}

/// Parses TOML into the raw config struct; syntax errors, unknown keys and bad values come back
/// located at their line.
pub fn from_toml<T: DeserializeOwned>(file: &str, src: &str) -> Result<T, ConfigErrors> {
    toml::from_str(src).map_err(|e| {
        let line = e.span().map(|s| line_of(src, s.start)).unwrap_or(1);
        let message = e.message().trim().replace('\n', " ");
        ConfigErrors(vec![Located {
            file: file.to_string(),
            line: Some(line),
            message,
        }])
    })
}

/// Collects validation problems with their lines, so `validate()` can report all of them at once.
pub struct Problems<'a> {
    file: &'a str,
    src: &'a str,
    list: Vec<Located>,
}

impl<'a> Problems<'a> {
    /// Starts an empty list for `file` whose text is `src`.
    pub fn new(file: &'a str, src: &'a str) -> Self {
        Problems {
            file,
            src,
            list: Vec::new(),
        }
    }
    /// Records a problem at a byte span of the source (from `toml::Spanned`).
    pub fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.list.push(Located {
            file: self.file.to_string(),
            line: Some(line_of(self.src, span.start)),
            message: message.into(),
        });
    }
    /// Records a problem that has no better place than the top of the file.
    pub fn top(&mut self, message: impl Into<String>) {
        self.at(0..0, message)
    }
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// `Ok(())` when nothing was recorded, otherwise every problem in file order.
    pub fn finish(mut self) -> Result<(), ConfigErrors> {
        if self.list.is_empty() {
            Ok(())
        } else {
            self.list.sort_by_key(|l| l.line);
            Err(ConfigErrors(self.list))
        }
    }
}

/// Resolves a path from a config file relative to the file's directory, the way operators expect
/// `cert = "certs/server.pem"` to work wherever `mqedge` is started from.
pub fn resolve_path(config_file: &Path, p: &str) -> std::path::PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_file
            .parent()
            .map(|d| d.join(p))
            .unwrap_or_else(|| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "5", "5x", "s", "-1s", "1s2", "ms5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("10KB").unwrap(), 10_000);
        assert_eq!(parse_size("512").unwrap(), 512);
        for bad in ["", "KiB", "1XB", "-1", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let h: Cidr = "127.0.0.1".parse().unwrap();
        assert!(h.contains("127.0.0.1".parse().unwrap()));
        assert!(!h.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: HumanDuration,
        b: Option<ByteSize>,
    }

    #[test]
    fn located_errors() {
        let src = "a = \"5s\"\nb = \"1KiB\"\n";
        let t: T = from_toml("f.toml", src).unwrap();
        assert_eq!(t.a.0, Duration::from_secs(5));
        let e = from_toml::<T>("f.toml", "a = \"5s\"\n\nzzz = 1\n").unwrap_err();
        assert!(
            e.to_string().starts_with("f.toml:3: unknown field `zzz`"),
            "{e}"
        );
        let e = from_toml::<T>("f.toml", "\na = \"5x\"\n").unwrap_err();
        assert!(
            e.to_string().starts_with("f.toml:2: invalid duration"),
            "{e}"
        );
        let e = from_toml::<T>("f.toml", "a = [\n").unwrap_err();
        assert!(e.to_string().starts_with("f.toml:"), "{e}");
    }
}
