
-- Finishes a receive into filesystem TARGET after `zfs recv` returned, in
-- one sync task: finds the snapshot that arrived by its guid among
-- TARGET's snapshots, sets its tags and clears TARGET's receiving mark
-- (inherit), so no crash leaves the arrival tagged with the mark still set
-- (nor the mark cleared with the arrival untagged).
-- argv: TARGET, WANT (the arrival's name: TARGET@ID), "guid=GUID" (the
-- stream's guid as a channel program prints one: a signed 64-bit decimal,
-- after "guid=" so that a negative one never starts with "-"), MARK (the
-- mark's property), then the arrival's tags as "property=value" (split by
-- tag_args, lua/props.lua).
-- Returns {result = "done", name, guid} (tagged, mark cleared)
-- | {result = "absent"} (no filesystem TARGET)
-- | {result = "missing"} (no snapshot of TARGET has GUID)
-- | {result = "elsewhere", name} (it arrived under another name)
-- | {result = "failed", errno, step} (ZFS refused a tag or the inherit).
-- Every outcome but "done" changes nothing: each change is checked
-- (zfs.check) before the first is made, and one refused after that (out of
-- space between the check and the change) undoes the others in the same
-- sync task, leaving the arrival untagged and the mark set, as a crash
-- before this program would: what abort_partial removes.
local argv = (...)["argv"]
local target, want, guid, mark = argv[1], argv[2], argv[3], argv[4]

-- The tags (lua/props.lua), split before anything is changed.
local props = tag_args(argv, 5)

if not zfs.exists(target) or zfs.get_prop(target, "type") ~= "filesystem" then
    return {result = "absent"}
end
local arrived = nil
for snap in zfs.list.snapshots(target) do
    if arrived == nil and "guid=" .. tostring(zfs.get_prop(snap, "guid")) == guid then
        arrived = snap
    end
end
if arrived == nil then
    return {result = "missing"}
end
if arrived ~= want then
    return {result = "elsewhere", name = arrived}
end

for _, p in ipairs(props) do
    local err = zfs.check.set_prop(arrived, p[1], p[2])
    if err ~= 0 then
        return {result = "failed", errno = err, step = "set_prop " .. p[1]}
    end
end
local err = zfs.check.inherit(target, mark)
if err ~= 0 then
    return {result = "failed", errno = err, step = "inherit " .. mark}
end

-- Undoes the first n tags (best effort: each was just set, so each
-- inherit passes the check that set_prop passed).
local function untag(n)
    for i = 1, n do
        zfs.sync.inherit(arrived, props[i][1])
    end
end
for i, p in ipairs(props) do
    err = zfs.sync.set_prop(arrived, p[1], p[2])
    if err ~= 0 then
        untag(i - 1)
        return {result = "failed", errno = err, step = "set_prop " .. p[1]}
    end
end
err = zfs.sync.inherit(target, mark)
if err ~= 0 then
    untag(#props)
    return {result = "failed", errno = err, step = "inherit " .. mark}
end
return {result = "done", name = arrived, guid = tostring(zfs.get_prop(arrived, "guid"))}
