"""``photoinfer partition``: stream a catalog into a Galactic HEALPix-partitioned Parquet dataset."""
from __future__ import annotations

HELP = "split a (large) catalog into HEALPix-partitioned Parquet files for the pixel pipeline"
DESCRIPTION = """\
Read a catalog in chunks (--rows at a time: Parquet is streamed, so the catalog may be larger
than memory; a directory of Parquet files such as a HATS catalog is read file by file) and
write it as OUT/Norder={k}/Npix={p}/part*.parquet, nested Galactic pixels at --nside, stars
without a position in Npix=-1.  OUT/_partition.json (written last) holds the row counts.
'photoinfer fit --catalog OUT --nside N' then reads only the partitions each pixel needs,
at any N.  See docs/pipeline.md.

examples:
  photoinfer partition --catalog gaia_ps1.parquet --out parts --nside 16
  photoinfer partition --catalog hats_catalog_dir/ --out parts --nside 32 --rows 500000
"""


def add_arguments(p) -> None:
    p.add_argument("--catalog", required=True, metavar="PATH", help="catalog file or directory of Parquet files")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist)")
    p.add_argument("--nside", type=int, default=32, help="partition nside, a power of two (default 32)")
    p.add_argument("--rows", type=int, default=1_000_000, help="stars read at a time (default 1,000,000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def run(args) -> int:
    from ..io.partitioned import partition_catalog
    from . import print_json
    part = partition_catalog(args.catalog, args.out, nside=args.nside, rows=args.rows, overwrite=args.overwrite)
    print_json({"out": str(part.path), "n_rows": len(part), "nside": args.nside, "partitions": len(part.counts)})
    return 0
