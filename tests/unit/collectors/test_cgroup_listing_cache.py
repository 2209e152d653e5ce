"""Cached cgroup discovery sees every pod and container change a fresh listing would see.

The cache re-lists a directory only when its (inode, mtime, link count) changed. On cgroupfs a
directory's mtime does not move when children come and go (kernfs), so these tests also pin the
mtime back after each change to behave like kernfs and prove the other safeguards.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agent.collectors.cgroupfs import scan
from agent.collectors.cgroupfs.layout import ListingCache
from bench.synthetic_node import build_node


def seen(root: Path, cache: ListingCache | None) -> set[tuple[str, str]]:
    return {(s.uid, s.container_id) for s in scan(root, cache=cache).stats}


def pod_dir(root: Path, uid: str) -> Path:
    u = uid.replace("-", "_")
    return next(root.glob(f"kubepods.slice/**/kubepods*-pod{u}.slice"))


def kernfs_like(d: Path, change: object) -> None:
    """Apply ``change`` (a callable) to ``d``'s children and put ``d``'s mtime back, as kernfs
    leaves it."""
    st = os.stat(d)
    change()  # type: ignore[operator]
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_unchanged_tree_is_not_listed_again(tmp_path: Path) -> None:
    build_node(tmp_path, pods=20, containers=2)
    cache = ListingCache()
    first = seen(tmp_path, cache)
    assert cache.listed == 1 + 2 + 20  # kubepods.slice, two QoS slices, every pod
    assert seen(tmp_path, cache) == first == seen(tmp_path, None)
    assert cache.listed == 0


def test_added_and_removed_pods_and_containers_are_seen(tmp_path: Path) -> None:
    refs = build_node(tmp_path, pods=10, containers=2)
    cache = ListingCache()
    seen(tmp_path, cache)
    gone = refs[0]
    shutil.rmtree(pod_dir(tmp_path, gone.uid))
    grown = pod_dir(tmp_path, refs[1].uid)
    shutil.copytree(next(grown.glob("cri-containerd-*.scope")),
                    grown / f"cri-containerd-{'e' * 64}.scope")
    got = seen(tmp_path, cache)
    assert got == seen(tmp_path, None)
    assert not any(uid == gone.uid for uid, _ in got)
    assert (refs[1].uid, "e" * 64) in got


def test_kernfs_added_container_is_seen_by_link_count(tmp_path: Path) -> None:
    refs = build_node(tmp_path, pods=5, containers=1)
    cache = ListingCache()
    seen(tmp_path, cache)
    d = pod_dir(tmp_path, refs[2].uid)
    src = next(d.glob("cri-containerd-*.scope"))
    kernfs_like(d, lambda: shutil.copytree(src, d / f"cri-containerd-{'a' * 64}.scope"))
    assert (refs[2].uid, "a" * 64) in seen(tmp_path, cache)


def test_kernfs_swapped_container_is_found_through_the_kubelet(tmp_path: Path) -> None:
    """One container replaced by another between two reads: same link count, same mtime.
    The kubelet's new container ID makes the next read re-list that pod."""
    refs = build_node(tmp_path, pods=5, containers=1)
    cache = ListingCache()
    seen(tmp_path, cache)
    d = pod_dir(tmp_path, refs[3].uid)
    old = next(d.glob("cri-containerd-*.scope"))
    new_id = "b" * 64
    kernfs_like(d, lambda: old.rename(d / f"cri-containerd-{new_id}.scope"))
    cache.expect({refs[3].uid: frozenset({new_id})})
    got = seen(tmp_path, cache)
    assert (refs[3].uid, new_id) in got
    assert cache.stale_pods == 1
    assert got == seen(tmp_path, None)


def test_kernfs_swapped_container_unknown_to_the_kubelet_is_seen_after_the_vanish(
    tmp_path: Path,
) -> None:
    """Without the kubelet's hint, the cached container that vanished makes the pod re-listed:
    the new container is seen one read later."""
    refs = build_node(tmp_path, pods=5, containers=1)
    cache = ListingCache()
    seen(tmp_path, cache)
    d = pod_dir(tmp_path, refs[4].uid)
    old = next(d.glob("cri-containerd-*.scope"))
    new_id = "c" * 64
    kernfs_like(d, lambda: shutil.copytree(old, d / f"cri-containerd-{new_id}.scope"))
    kernfs_like(d, lambda: shutil.rmtree(old))
    r = scan(tmp_path, cache=cache)
    assert r.errors == {"vanished": 1}  # the old container, as when it vanishes mid-read
    assert (refs[4].uid, new_id) in seen(tmp_path, cache)


def test_a_change_no_key_sees_is_seen_by_the_full_relist(tmp_path: Path) -> None:
    """A non-container directory (cri-o's conmon) replaced by a container: nothing vanishes,
    the link count and mtime stay; the periodic full listing finds it."""
    refs = build_node(tmp_path, pods=5, containers=1)
    d = pod_dir(tmp_path, refs[0].uid)
    (d / "crio-conmon-1234.scope").mkdir()
    cache = ListingCache(full_every=3)
    seen(tmp_path, cache)  # read 1: full
    src = next(d.glob("cri-containerd-*.scope"))
    new_id = "d" * 64
    kernfs_like(d, lambda: shutil.copytree(src, d / f"cri-containerd-{new_id}.scope"))
    kernfs_like(d, lambda: (d / "crio-conmon-1234.scope").rmdir())
    assert (refs[0].uid, new_id) not in seen(tmp_path, cache)  # read 2: cached
    assert (refs[0].uid, new_id) not in seen(tmp_path, cache)  # read 3: cached
    assert (refs[0].uid, new_id) in seen(tmp_path, cache)  # read 4: full
