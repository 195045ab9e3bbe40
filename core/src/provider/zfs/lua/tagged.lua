-- volmgr's tag rule (ZfsProvider::tag_of): dataset `ds` is ours under the
-- id `id` and kind `kind` if its volmgr: user properties (its own or
-- inherited, as `zfs list` shows them) say owner volmgr, that id, that
-- kind, and an operation id in UUID form (lower or upper hex, hyphenated:
-- what the provider writes; a subset of what its Rust check accepts).
local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

local function tagged(ds, id, kind)
    local op = zfs.get_prop(ds, "volmgr:op")
    return zfs.get_prop(ds, "volmgr:owner") == "volmgr"
        and zfs.get_prop(ds, "volmgr:volume-id") == id
        and zfs.get_prop(ds, "volmgr:kind") == kind
        and type(op) == "string" and string.find(op, UUID) ~= nil
end
