/* How much an munmap costs before and after a posix_spawn()ed child ran (and
 * exited): after, the kernel may have to interrupt the CPU the child ran on.
 * cc -O2 -o /tmp/munmap_after_spawn munmap_after_spawn.c && /tmp/munmap_after_spawn */
#define _GNU_SOURCE
#include <sys/mman.h>
#include <stdio.h>
#include <time.h>
#include <spawn.h>
#include <sys/wait.h>
extern char **environ;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(int argc, char**argv){
  double a=0,b=0; int N=200;
  for(int i=0;i<N;i++){
    char*p=mmap(0,4096,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); p[0]=1;
    char*q=mmap(0,4096,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); q[0]=1;
    double t0=now(); munmap(p,4096); double t1=now(); a+=t1-t0;
    pid_t pid; char*args[]={"/bin/sleep","0.01",0};
    posix_spawn(&pid,"/bin/sleep",0,0,args,environ); int st; waitpid(pid,&st,0);
    double t2=now(); munmap(q,4096); double t3=now(); b+=t3-t2;
  }
  printf("munmap before spawn %.2f us, after spawn %.2f us\n",a/N/1e3,b/N/1e3);
}
