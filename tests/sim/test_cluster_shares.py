from __future__ import annotations

from pathlib import Path

import pytest

from gpuq.scheduler.sim.cluster import (
    DEFAULT_MODEL,
    NodeGroup,
    build_nodes,
    load_cluster_file,
    parse_nodes,
)
from gpuq.scheduler.sim.errors import SimInputError
from gpuq.scheduler.sim.shares import ROOT, Account, Assoc, Tree, complete, load_shares


def test_nodes_option() -> None:
    assert parse_nodes("1000x8") == [NodeGroup(1000, 8, DEFAULT_MODEL)]
    assert parse_nodes("2x8:A100-80GB, 1x4:H100-80GB") == [
        NodeGroup(2, 8, "A100-80GB"), NodeGroup(1, 4, "H100-80GB")]


@pytest.mark.parametrize("spec", ["", "8", "2x", "0x8", "2x0", "2*8", "2x8:"])
def test_bad_nodes_option(spec: str) -> None:
    with pytest.raises(SimInputError, match="--nodes"):
        parse_nodes(spec)


def test_node_names_follow_the_groups() -> None:
    nodes = build_nodes([NodeGroup(2, 8, "A"), NodeGroup(1, 4, "B")])
    assert [(n.name, n.gpus, n.model) for n in nodes] == [
        ("node0001", 8, "A"), ("node0002", 8, "A"), ("node0003", 4, "B")]
    view = nodes[2].view(frozenset({1, 3}))
    assert view.usable_gpus("B") == [1, 3] and view.gpu_count(None) == 4


def test_cluster_files_csv_and_toml(tmp_path: Path) -> None:
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("nodes,gpus,model\n2,8,A100-80GB\n1,4,\n")
    assert load_cluster_file(csv_file) == [NodeGroup(2, 8, "A100-80GB"),
                                           NodeGroup(1, 4, DEFAULT_MODEL)]
    toml_file = tmp_path / "c.toml"
    toml_file.write_text('[[nodes]]\ncount = 2\ngpus = 8\nmodel = "H100-80GB"\n'
                         '[[nodes]]\ncount = 1\ngpus = 4\n')
    assert load_cluster_file(toml_file) == [NodeGroup(2, 8, "H100-80GB"),
                                            NodeGroup(1, 4, DEFAULT_MODEL)]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("c.csv", "nodes,gpus\n2,eight\n", "c.csv:2: column 'gpus'"),
    ("c.csv", "count,gpus\n2,8\n", "c.csv:1: expected the header nodes,gpus[,model]"),
    ("c.csv", "nodes,gpus\n", "no nodes"),
    ("c.toml", "[[nodes]]\ncount = 2\n", "[[nodes]] #1: needs count and gpus"),
    ("c.toml", "[[nodes]]\ncount = 2\ngpus = '8'\n", "gpus must be a whole number"),
    ("c.toml", "nodes = 3\n", "expected one or more [[nodes]] tables"),
    ("c.toml", "[[nodes]\n", "not valid TOML"),
])
def test_bad_cluster_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SimInputError) as e:
        load_cluster_file(path)
    assert message in str(e.value)


SHARES = """type,name,parent,shares
account,physics,,60
account,hep,physics,2
account,theory,physics,parent
account,chem,,40
user,alice,hep,1
user,bob,hep,parent
user,carol,chem,3
"""


def test_shares_file(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(SHARES)
    tree = load_shares(path)
    assert tree.accounts[0] == Account(ROOT, None)
    assert Account("hep", "physics", 2) in tree.accounts
    assert Account("theory", "physics", 1, shares_parent=True) in tree.accounts
    assert Account("chem", ROOT, 40) in tree.accounts
    assert tree.assocs == (Assoc("carol", "chem", 3), Assoc("alice", "hep", 1),
                           Assoc("bob", "hep", 1, shares_parent=True))
    # The trace's other users and accounts join with 1 share.
    full = complete(tree, [("alice", "hep"), ("dave", "chem"), ("erin", "bio")])
    assert Account("bio", ROOT, 1) in full.accounts
    assert Assoc("dave", "chem", 1) in full.assocs and Assoc("erin", "bio") in full.assocs
    assert full.top_levels() == {"physics": ("physics", 60), "hep": ("physics", 60),
                                 "theory": ("physics", 60), "chem": ("chem", 40),
                                 "bio": ("bio", 1)}


def test_equal_shares_without_a_file() -> None:
    tree = complete(None, [("u1", "a"), ("u2", "a"), ("u1", "b")])
    assert [a.name for a in tree.accounts] == [ROOT, "a", "b"]
    assert all(a.shares == 1 and a.parent == ROOT for a in tree.accounts[1:])
    assert tree.assocs == (Assoc("u1", "a"), Assoc("u2", "a"), Assoc("u1", "b"))


def test_a_parent_shares_account_under_root_hands_its_level_to_its_children() -> None:
    tree = Tree(accounts=(Account(ROOT, None), Account("dept", ROOT, 1, True),
                          Account("lab1", "dept", 3), Account("lab2", "dept", 1)),
                assocs=())
    assert tree.top_levels() == {"dept": ("dept", 1), "lab1": ("lab1", 3),
                                 "lab2": ("lab2", 1)}


@pytest.mark.parametrize(("row", "message"), [
    ("account,x,nowhere,1", "s.csv:2: column 'parent': no account 'nowhere'"),
    ("account,x,,lots", "s.csv:2: column 'shares': must be a whole number >= 0 or 'parent'"),
    ("account,x,,-1", "s.csv:2: column 'shares'"),
    ("account,root,,1", "s.csv:2: column 'name': root is implied"),
    ("group,x,,1", "s.csv:2: column 'type': must be 'account' or 'user'"),
    ("user,alice,,1", "s.csv:2: column 'parent': a user row needs its account"),
    ("user,alice,nowhere,1", "s.csv:2: column 'parent': no account 'nowhere'"),
    ("account,x,,1,extra", "s.csv:2: has 5 fields"),
])
def test_bad_shares_rows(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(f"type,name,parent,shares\n{row}\n")
    with pytest.raises(SimInputError) as e:
        load_shares(path)
    assert message in str(e.value)


def test_shares_cycles_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("type,name,parent,shares\naccount,a,b,1\naccount,b,a,1\n")
    with pytest.raises(SimInputError, match="s.csv:2: column 'parent': .* cycle"):
        load_shares(path)
    path.write_text("type,name,parent,shares\naccount,a,,1\naccount,a,,2\n")
    with pytest.raises(SimInputError, match="s.csv:3: column 'name': account 'a' is already"):
        load_shares(path)
    path.write_text("name,parent,shares\n")
    with pytest.raises(SimInputError, match="expected the header type,name,parent,shares"):
        load_shares(path)
