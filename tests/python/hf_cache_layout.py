"""The Hugging Face cache layout, made and checked by huggingface_hub itself.

The Rust tests (crates/hub/tests/hf_cache.rs) build the same cache by hand, so they need no
Python; this script is how that layout was checked against the library (pip install
huggingface_hub):

    # a cache made with the library's own helpers; `--model Qwen/Qwen2.5-0.5B-Instruct`
    # (and @v1, @2222...) resolve in it as in the Rust test `a_repo_id_resolves_...`
    python tests/python/hf_cache_layout.py make /tmp/hf-cache

    # a cache written by `cargo xtask download` (or by the Rust test, kept with
    # HUB_TEST_KEEP_CACHE=/tmp/rust-cache cargo test -p hub --test hf_cache download_without)
    # is read by huggingface_hub offline
    python tests/python/hf_cache_layout.py check /tmp/rust-cache Qwen/Qwen2.5-0.5B-Instruct
"""

import hashlib
import os
import sys

REPO = "Qwen/Qwen2.5-0.5B-Instruct"
MAIN = "7ae557604adf67be50417f59c2c2f167def9a775"
V1 = "1111111111111111111111111111111111111111"
UNREFERENCED = "2222222222222222222222222222222222222222"

FILES = {
    "config.json": (b'{"architectures":["Qwen2ForCausalLM"]}', False),
    "model.safetensors": (bytes((i * 7 % 251) for i in range(50_000)), True),
    "templates/chat_template.jinja": (b"{% for m in messages %}{{ m.content }}{% endfor %}", False),
}


def blob_name(content: bytes, lfs: bool) -> str:
    """The hub's ETag: the LFS sha256, or the git blob id of a file kept in git."""
    if lfs:
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def make(cache_dir: str) -> None:
    from huggingface_hub.file_download import (
        _cache_commit_hash_for_specific_revision,
        _create_symlink,
        repo_folder_name,
    )

    storage = os.path.join(cache_dir, repo_folder_name(repo_id=REPO, repo_type="model"))
    # What hf_hub_download does per file: blob by ETag, symlink from the snapshot, ref.
    for revision, commit in [("main", MAIN), ("v1", V1), (UNREFERENCED, UNREFERENCED)]:
        for path, (content, lfs) in FILES.items():
            blob = os.path.join(storage, "blobs", blob_name(content, lfs))
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            with open(blob, "wb") as f:
                f.write(content)
            pointer = os.path.join(storage, "snapshots", commit, path)
            os.makedirs(os.path.dirname(pointer), exist_ok=True)
            _create_symlink(blob, pointer, new_blob=False)
        _cache_commit_hash_for_specific_revision(storage, revision, commit)
    check(cache_dir, REPO)
    for root, dirs, files in sorted(os.walk(storage)):
        for name in sorted(files):
            path = os.path.join(root, name)
            link = f" -> {os.readlink(path)}" if os.path.islink(path) else ""
            print(os.path.relpath(path, storage) + link)


def check(cache_dir: str, repo: str, revision: str = "main") -> None:
    from huggingface_hub import scan_cache_dir, snapshot_download

    snapshot = snapshot_download(repo, revision=revision, cache_dir=cache_dir, local_files_only=True)
    info = scan_cache_dir(cache_dir)
    assert not info.warnings, info.warnings
    (cached,) = [r for r in info.repos if r.repo_id == repo]
    print(f"huggingface_hub {revision} -> {snapshot}")
    for rev in sorted(cached.revisions, key=lambda r: r.commit_hash):
        print(f"  {rev.commit_hash} refs={sorted(rev.refs)} files={sorted(f.file_name for f in rev.files)}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"make": make, "check": check}[command](*args)
