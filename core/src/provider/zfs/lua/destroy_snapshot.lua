
-- Destroys snapshot SNAP if it is tagged as snapshot ID, in one sync task.
-- argv: SNAP, ID.
-- Returns {result = "destroyed"} | {result = "absent"}
-- | {result = "foreign"} (not tagged as ID: untouched)
-- | {result = "clones", clones = "a,b"} (dependent clones: untouched)
-- | {result = "busy", holds = "6b656570,...", count = N} (EBUSY: mounted
--   under .zfs/snapshot, or held; its N user holds, the first MAX_HOLDS
--   tags of them in hex)
-- | {result = "failed", errno, step}.
local argv = (...)["argv"]
local snap, id = argv[1], argv[2]

-- How many hold tags a busy answer carries (`zfs.list.holds` order); the
-- count is of all of them. Equal to holds.rs's MAX_HOLDS.
local MAX_HOLDS = 16

-- A hold tag is any bytes `zfs hold` took (up to 255), and `zfs program -j`
-- stops printing at a byte that is not UTF-8: each goes out as hex.
local function hex(s)
    return (string.gsub(s, ".", function(c)
        return string.format("%02x", string.byte(c))
    end))
end

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
    local holds, count = {}, 0
    for tag in zfs.list.holds(snap) do
        count = count + 1
        if count <= MAX_HOLDS then
            holds[count] = hex(tag)
        end
    end
    return {result = "busy", holds = table.concat(holds, ","), count = count}
end
return {result = "failed", errno = err, step = "destroy"}
