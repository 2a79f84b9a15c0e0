"""Storage against real servers: local folders and an S3-compatible HTTP server (moto)."""

from __future__ import annotations

from pathlib import Path

import aioboto3
import pytest

from trainmaster.settings import Settings
from trainmaster.storage import Storage, StorageError, parse_s3

pytestmark = pytest.mark.integration


async def make_bucket(server, name: str, region: str = "us-east-1") -> None:
    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=server.endpoint_url, region_name=region,
                              aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        config = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        await s3.create_bucket(Bucket=name, **config)


def write_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.csv").write_text("x,y\n1,2\n")
    (root / "sub" / "b.csv").write_text("x,y\n3,4\n")


async def test_upload_list_download_round_trip(s3_server, tmp_path: Path) -> None:
    await make_bucket(s3_server, "roundtrip")
    storage = Storage(s3_server.settings())
    write_tree(tmp_path / "src")
    assert await storage.upload(tmp_path / "src", "s3://roundtrip/data/v1") == 2
    listed = await storage.list("s3://roundtrip/data/v1")
    assert [(o.relative, o.size) for o in listed] == [("a.csv", 8), ("sub/b.csv", 8)]
    assert all(o.checksum for o in listed)
    seen: list[tuple[int, int]] = []
    paths = await storage.download("s3://roundtrip/data/v1", tmp_path / "dst",
                                   progress=lambda done, total: seen.append((done, total)))
    assert sorted(p.relative_to(tmp_path / "dst").as_posix() for p in paths) == ["a.csv", "sub/b.csv"]
    assert (tmp_path / "dst" / "sub" / "b.csv").read_text() == "x,y\n3,4\n"
    assert seen[-1] == (2, 2)


async def test_local_locations_use_the_same_interface(tmp_path: Path) -> None:
    storage = Storage(Settings())
    write_tree(tmp_path / "src")
    listed = await storage.list(str(tmp_path / "src"), checksums=True)
    assert [o.relative for o in listed] == ["a.csv", "sub/b.csv"] and listed[0].checksum
    await storage.download(str(tmp_path / "src"), tmp_path / "copy")
    assert (tmp_path / "copy" / "sub" / "b.csv").exists()
    assert await storage.upload(tmp_path / "copy", f"file://{tmp_path / 'out'}") == 2
    assert (tmp_path / "out" / "a.csv").exists()


async def test_bucket_region_is_reported(s3_server) -> None:
    await make_bucket(s3_server, "far-away", region="eu-west-1")
    await make_bucket(s3_server, "at-home")
    storage = Storage(s3_server.settings())
    assert await storage.bucket_region("s3://far-away/x") == "eu-west-1"
    assert await storage.bucket_region("s3://at-home") == "us-east-1"


async def test_errors_name_the_location(s3_server, tmp_path: Path) -> None:
    storage = Storage(s3_server.settings())
    with pytest.raises(StorageError, match="s3://no-such-bucket"):
        await storage.list("s3://no-such-bucket/x")
    with pytest.raises(StorageError, match="does not exist"):
        await storage.list(str(tmp_path / "missing"))
    with pytest.raises(StorageError, match="names no bucket"):
        parse_s3("s3:///x")
