
-- Destroys snapshot SNAP if it is tagged as snapshot ID, in one sync task.
-- argv: SNAP, ID.
-- Returns {result = "destroyed"} | {result = "absent"}
-- | {result = "foreign"} (not tagged as ID: untouched)
-- | {result = "clones", clones = "a,b"} (dependent clones: untouched)
-- | {result = "busy"} (EBUSY: mounted under .zfs/snapshot, or held)
-- | {result = "failed", errno, step}.
local argv = (...)["argv"]
local snap, id = argv[1], argv[2]

if not zfs.exists(snap) then
    return {result = "absent"}
end
if not tagged(snap, id, "snapshot") then
    return {result = "foreign"}
end
local err = zfs.sync.destroy(snap)
if err == 0 then
    return {result = "destroyed"}
elseif err == EEXIST then
    local clones = {}
    for c in zfs.list.clones(snap) do
        clones[#clones + 1] = c
    end
    return {result = "clones", clones = table.concat(clones, ",")}
elseif err == EBUSY then
    return {result = "busy"}
end
return {result = "failed", errno = err, step = "destroy"}
