-- The tags a script takes as its trailing arguments: tag_args(argv, first)
-- splits argv[first], argv[first + 1], ... (each "property=value", as
-- ZfsProvider::tags builds them) at their first "=" into a list of
-- {property, value} pairs, in argument order. An argument without "=", or
-- with nothing before it, is a fatal error: called before the script's
-- first change, so such an argument changes nothing.
local function tag_args(argv, first)
    local props = {}
    for i = first, #argv do
        local eq = string.find(argv[i], "=", 1, true)
        if eq == nil or eq == 1 then
            error("tag argument without a property name: " .. argv[i])
        end
        props[#props + 1] = {string.sub(argv[i], 1, eq - 1), string.sub(argv[i], eq + 1)}
    end
    return props
end
