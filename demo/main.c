/* A tiny host program for the demo: runs a Lua script through the Lua 5.4
 * library, so the demo links and exercises every backend's object. */
#include <stdio.h>
#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static const char *script =
    "local t = {}\n"
    "for i = 1, 200 do t[i] = string.format('%d', i * i) end\n"
    "local s = 0\n"
    "for _, v in ipairs(t) do s = s + tonumber(v) end\n"
    "print(string.format('lua says: sum of squares 1..200 = %d, %s', s, _VERSION))\n";

int main(void) {
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    int rc = luaL_dostring(L, script);
    if (rc != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_close(L);
    return rc;
}
