//! What a file must look like once downloaded, and the hashing that checks it.
//!
//! LFS files (the weights, the parquet shards) are named by the sha256 of their content.
//! Small files kept in git are named by their git blob id: sha1 of `"blob {len}\0"` followed by
//! the content. Both are checked where the hub tells them; the size always is.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::errors::HubError;
use crate::protocol::{is_hex_digest, FileHead, Sibling};

/// The digest the hub publishes for a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedDigest {
    /// The LFS object id.
    Sha256(String),
    /// The git blob id of a file stored in git itself.
    GitBlobSha1(String),
}

/// What a downloaded file is checked against.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExpectedFile {
    pub size: Option<u64>,
    pub digest: Option<ExpectedDigest>,
}

impl ExpectedFile {
    /// From the repo listing (`?blobs=true`): the LFS sha256 if the file is in LFS, else its
    /// git blob id.
    pub fn from_sibling(sibling: &Sibling) -> Self {
        let digest = match (&sibling.lfs, &sibling.blob_id) {
            (Some(lfs), _) if is_hex_digest(&lfs.sha256, 64) => {
                Some(ExpectedDigest::Sha256(lfs.sha256.to_ascii_lowercase()))
            }
            (None, Some(blob)) if is_hex_digest(blob, 40) => {
                Some(ExpectedDigest::GitBlobSha1(blob.to_ascii_lowercase()))
            }
            _ => None,
        };
        let size = sibling.lfs.as_ref().and_then(|l| l.size).or(sibling.size);
        ExpectedFile { size, digest }
    }

    /// Refines the listing's expectation with what `HEAD` said about the very file the
    /// download will fetch; the listing fills whatever the headers leave out.
    pub fn merged_with_head(&self, head: &FileHead) -> Self {
        let head_digest = match (&head.linked_etag, &head.etag) {
            (Some(linked), _) if is_hex_digest(linked, 64) => {
                Some(ExpectedDigest::Sha256(linked.clone()))
            }
            (None, Some(etag)) if is_hex_digest(etag, 64) => {
                Some(ExpectedDigest::Sha256(etag.clone()))
            }
            (None, Some(etag)) if is_hex_digest(etag, 40) => {
                Some(ExpectedDigest::GitBlobSha1(etag.clone()))
            }
            _ => None,
        };
        ExpectedFile {
            size: head.size.or(self.size),
            digest: head_digest.or_else(|| self.digest.clone()),
        }
    }

    /// Whether hashing must also compute the git blob id.
    pub fn wants_git_blob(&self) -> bool {
        matches!(self.digest, Some(ExpectedDigest::GitBlobSha1(_)))
    }

    /// Checks measured digests; `path` only names the file in the error.
    pub fn check(&self, path: &str, measured: &ContentDigests) -> Result<(), HubError> {
        if let Some(expected) = self.size {
            if expected != measured.size {
                return Err(HubError::SizeMismatch {
                    path: path.to_string(),
                    expected,
                    actual: measured.size,
                });
            }
        }
        let (expected, actual) = match &self.digest {
            None => return Ok(()),
            Some(ExpectedDigest::Sha256(hex)) => (hex, Some(&measured.sha256)),
            Some(ExpectedDigest::GitBlobSha1(hex)) => (hex, measured.git_blob_sha1.as_ref()),
        };
        match actual {
            Some(actual) if actual.eq_ignore_ascii_case(expected) => Ok(()),
            actual => Err(HubError::ChecksumMismatch {
                path: path.to_string(),
                expected: expected.clone(),
                actual: actual.cloned().unwrap_or_else(|| "(not computed)".into()),
            }),
        }
    }
}

/// Digests of a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentDigests {
    pub size: u64,
    pub sha256: String,
    pub git_blob_sha1: Option<String>,
}

/// Hashes content as it streams past, so a download is verified without reading it twice.
pub struct ContentHasher {
    sha256: Sha256,
    /// The git blob hash needs the total length up front (it is in the header it hashes).
    git_blob: Option<Sha1>,
    size: u64,
}

impl ContentHasher {
    /// `git_blob_len`: the length to hash into the git blob header, or `None` to skip the
    /// git blob id.
    pub fn new(git_blob_len: Option<u64>) -> Self {
        let git_blob = git_blob_len.map(|len| {
            let mut sha1 = Sha1::new();
            sha1.update(format!("blob {len}\0").as_bytes());
            sha1
        });
        ContentHasher {
            sha256: Sha256::new(),
            git_blob,
            size: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(sha1) = &mut self.git_blob {
            sha1.update(bytes);
        }
        self.size += bytes.len() as u64;
    }

    pub fn finish(self) -> ContentDigests {
        ContentDigests {
            size: self.size,
            sha256: hex::encode(self.sha256.finalize()),
            git_blob_sha1: self.git_blob.map(|sha1| hex::encode(sha1.finalize())),
        }
    }
}

/// Feeds the first `len` bytes of a file into `hasher` (the part already downloaded, when a
/// download resumes).
pub fn hash_prefix(path: &Path, len: u64, hasher: &mut ContentHasher) -> std::io::Result<()> {
    let mut reader = File::open(path)?.take(len);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    if hasher.size < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} shrank while being hashed", path.display()),
        ));
    }
    Ok(())
}

/// Hashes a whole file already on disk.
pub fn hash_file(path: &Path, with_git_blob: bool) -> std::io::Result<ContentDigests> {
    let len = std::fs::metadata(path)?.len();
    let mut hasher = ContentHasher::new(with_git_blob.then_some(len));
    hash_prefix(path, len, &mut hasher)?;
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::LfsInfo;

    #[test]
    fn git_blob_id_matches_git_hash_object() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut hasher = ContentHasher::new(Some(6));
        hasher.update(b"hello\n");
        let digests = hasher.finish();
        assert_eq!(
            digests.git_blob_sha1.as_deref(),
            Some("ce013625030ba8dba906f756967f9e9ca394464a")
        );
        assert_eq!(
            digests.sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
    }

    #[test]
    fn listing_gives_sha256_for_lfs_and_blob_id_otherwise() {
        let lfs = Sibling {
            rfilename: "model.safetensors".into(),
            size: Some(10),
            blob_id: Some("a".repeat(40)),
            lfs: Some(LfsInfo {
                sha256: "B".repeat(64),
                size: Some(10),
            }),
        };
        assert_eq!(
            ExpectedFile::from_sibling(&lfs),
            ExpectedFile {
                size: Some(10),
                digest: Some(ExpectedDigest::Sha256("b".repeat(64)))
            }
        );
        let plain = Sibling {
            lfs: None,
            ..lfs.clone()
        };
        assert_eq!(
            ExpectedFile::from_sibling(&plain).digest,
            Some(ExpectedDigest::GitBlobSha1("a".repeat(40)))
        );
    }

    #[test]
    fn head_headers_override_the_listing() {
        let listing = ExpectedFile {
            size: Some(1),
            digest: Some(ExpectedDigest::GitBlobSha1("a".repeat(40))),
        };
        let head = FileHead {
            linked_etag: Some("c".repeat(64)),
            size: Some(2),
            ..FileHead::default()
        };
        let merged = listing.merged_with_head(&head);
        assert_eq!(merged.size, Some(2));
        assert_eq!(merged.digest, Some(ExpectedDigest::Sha256("c".repeat(64))));
        assert_eq!(listing.merged_with_head(&FileHead::default()), listing);
    }

    #[test]
    fn check_reports_size_then_digest_mismatch() {
        let mut hasher = ContentHasher::new(None);
        hasher.update(b"abc");
        let measured = hasher.finish();
        let wrong_size = ExpectedFile {
            size: Some(4),
            digest: None,
        };
        assert!(matches!(
            wrong_size.check("f", &measured),
            Err(HubError::SizeMismatch {
                expected: 4,
                actual: 3,
                ..
            })
        ));
        let wrong_hash = ExpectedFile {
            size: Some(3),
            digest: Some(ExpectedDigest::Sha256("0".repeat(64))),
        };
        assert!(matches!(
            wrong_hash.check("f", &measured),
            Err(HubError::ChecksumMismatch { .. })
        ));
        let right = ExpectedFile {
            size: Some(3),
            digest: Some(ExpectedDigest::Sha256(measured.sha256.clone())),
        };
        assert!(right.check("f", &measured).is_ok());
    }
}
