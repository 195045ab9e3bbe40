-- The names under data root DATA that can carry the tag of volume ID
-- (ZfsProvider::tag_of: an item is ours only under its own name, so only
-- the filesystem DATA/ID and the snapshots DATA/<child>@ID can), each if it
-- exists with that type; run read-only (`zfs program -n`: no sync task, no
-- change). One `zfs.exists` per child of DATA: the child's snapshot of that
-- name is found by name, its other snapshots are never listed.
-- argv: DATA, ID.
-- Returns {names = "a,b"}: comma separated (no ZFS name holds a comma),
-- empty if none.
local argv = (...)["argv"]
local data, id = argv[1], argv[2]

-- ZFS_MAX_DATASET_NAME_LEN (256) counts the NUL: a longer name cannot
-- exist, so it is not asked. (OpenZFS 2.1.11 answers false for one that
-- long; a hold that checks the whole name's length would fail with
-- ENAMETOOLONG, which `zfs.exists` raises as an error.)
local MAX_NAME_LEN = 255
local names = {}

local function add(name, kind)
    if #name <= MAX_NAME_LEN and zfs.exists(name)
        and zfs.get_prop(name, "type") == kind then
        names[#names + 1] = name
    end
end

if zfs.exists(data) then
    add(data .. "/" .. id, "filesystem")
    for child in zfs.list.children(data) do
        add(child .. "@" .. id, "snapshot")
    end
end
return {names = table.concat(names, ",")}
